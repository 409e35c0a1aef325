"""Stage mask: the k lowest-scoring neurons over the global pool, k from `ratio`.

Usage: python stages/mask.py              (writes artifacts/mask/{mask,summary}.json and artifacts/budget.json)
"""

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.mask_stage(params))
