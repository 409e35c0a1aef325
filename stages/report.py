"""Stage report: reports/metrics.json, results.md/.csv and PNG plots comparing the methods.

Usage: python stages/report.py
"""

from _common import run_stage

from neft import report

if __name__ == "__main__":
    run_stage(lambda params: report.write_report(params))
