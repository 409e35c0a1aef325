"""Stage prepare_data: the task's deterministic train/valid/test splits as JSONL.

Usage: python stages/prepare_data.py      (reads params.yaml: task, seed; writes data/prepared/)
"""

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.prepare_data(params))
