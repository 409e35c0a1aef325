"""Stage score: cosine similarity base vs probe of every candidate neuron.

Usage: python stages/score.py             (writes artifacts/scores/scores.parquet: layer, kind, index, score)
"""

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.score_stage(params))
