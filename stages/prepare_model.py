"""Stage prepare_model: load the base model once (GGUF -> plain weights) and save it with its tokenizer.

Usage: python -m stages.prepare_model     (reads params.yaml: model, seed; writes artifacts/model/)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from neft.artifacts import BASE_MODEL_DIR, MODEL_SHAPE_FILE
from neft.config import Config
from neft.io import atomic_directory, write_json
from neft.masks import ModelShape
from neft.models import load_source_model, save_model
from neft.provenance import record_fingerprint
from stages._common import run_stage


def prepare_model(config: Config, out_dir: Path = BASE_MODEL_DIR) -> dict[str, Any]:
    start = time.perf_counter()
    model, tokenizer = load_source_model(config.model, config.seed)
    shape = ModelShape.of(model)
    with atomic_directory(out_dir) as scratch:
        save_model(model, tokenizer, scratch)
        record_fingerprint(scratch)
        write_json(scratch / MODEL_SHAPE_FILE.name, vars(shape))
    return {"model": config.model.name, **vars(shape), "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    run_stage(prepare_model)
