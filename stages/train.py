"""Stage train@RUN: the probe (a short full fine-tune) or one method: full, neft, lora.

Usage: python stages/train.py RUN         (RUN in probe, full, neft, lora)
Writes artifacts/probe or artifacts/train/RUN (weights, delta or adapter) and reports/train/RUN
(dvclive step logs and summary.json).
"""

import sys

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.train_stage(sys.argv[1], params), usage="RUN", argc=1)
