"""Stage score: how far the probe turned every candidate neuron (signed cosine and 1 - cosine).

Usage: python -m stages.score             (writes artifacts/scores/scores.parquet: layer, kind, index, cosine, change)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from neft.artifacts import BASE_MODEL_DIR, PROBE_DIR, SCORES_DIR, SCORES_FILE
from neft.config import ConfigError
from neft.io import atomic_directory, write_json
from neft.neurons import SCORE_FORMS, resolve_kinds, score_neurons, score_resolution
from stages._common import run_stage


def score(params: dict[str, Any], out_dir: Path = SCORES_DIR) -> dict[str, Any]:
    kinds = params["mask"]["kinds"]
    resolve_kinds(kinds)
    form = params["score"]["form"]
    if form not in SCORE_FORMS:
        raise ConfigError(f"score.form={form!r} is unknown; choose one of {SCORE_FORMS}")
    start = time.perf_counter()
    scores = score_neurons(BASE_MODEL_DIR, PROBE_DIR, kinds, form=form)
    seconds = time.perf_counter() - start
    summary = {"neurons": len(scores), "form": form, "seconds": round(seconds, 3), **score_resolution(scores)}
    with atomic_directory(out_dir) as scratch:
        scores.to_parquet(scratch / SCORES_FILE.name, index=False)
        write_json(scratch / "summary.json", summary)
    return summary


if __name__ == "__main__":
    run_stage(score)
