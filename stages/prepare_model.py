"""Stage prepare_model: the base model as safetensors + tokenizer, loaded from its source once.

Usage: python stages/prepare_model.py     (reads params.yaml: model, seed; writes artifacts/model/)
"""

from _common import run_stage

from neft import pipeline

if __name__ == "__main__":
    run_stage(lambda params: pipeline.prepare_model(params))
