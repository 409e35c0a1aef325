"""Stage analyze: score histogram with the cutoff, mask heatmap, mask overlaps (Jaccard) across
budgets and controls, and the paper's utilisation-rank groups between the base and NeFT models.

Usage: python stages/analyze.py           (writes reports/analysis/)
"""

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.analysis_stage(params))
