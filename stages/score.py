"""Stage score: how far the probe turned every candidate neuron (signed cosine and 1 - cosine).

Usage: python -m stages.score             (writes artifacts/scores/scores.parquet: layer, kind, index, cosine, change)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from neft.artifacts import BASE_MODEL_DIR, PROBE_DIR, SCORES_DIR, SCORES_FILE
from neft.config import Config
from neft.io import atomic_directory, write_json
from neft.neurons import score_neurons, score_resolution
from neft.provenance import model_fingerprint
from stages._common import run_stage


def score(config: Config, out_dir: Path = SCORES_DIR) -> dict[str, Any]:
    kinds, form = list(config.mask.kinds), config.score.form
    start = time.perf_counter()
    scores = score_neurons(BASE_MODEL_DIR, PROBE_DIR, kinds, form=form)
    seconds = time.perf_counter() - start
    summary = {"neurons": len(scores), "form": form, **score_resolution(scores),
               "made_from": {"base_model": model_fingerprint(BASE_MODEL_DIR), "probe": model_fingerprint(PROBE_DIR)}}
    with atomic_directory(out_dir) as scratch:
        scores.to_parquet(scratch / SCORES_FILE.name, index=False)
        write_json(scratch / "summary.json", summary)  # no timings: the mask stage depends on this file
    return {**summary, "seconds": round(seconds, 3)}


if __name__ == "__main__":
    run_stage(score)
