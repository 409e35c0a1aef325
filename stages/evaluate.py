"""Stage evaluate@METHOD: greedy generation on the test split, BLEU/chrF or ROUGE.

Usage: python stages/evaluate.py METHOD   (METHOD in base, full, neft, lora; writes reports/eval/METHOD/)
"""

import sys

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.evaluate_stage(sys.argv[1], params), usage="METHOD", argc=1)
