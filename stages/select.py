"""Stage select: each method's learning rate, the one whose run reached the lowest validation loss.

Usage: python -m stages.select            (writes reports/selection/METHOD.json and artifacts/chosen/METHOD.json)
Reads every candidate's validation loss (artifacts/train/METHOD/lrRATE/validation.json, beside its
weights), never a test score. reports/selection/METHOD.json lists every candidate's validation loss, the chosen run and
whether the choice is bracketed; artifacts/chosen/METHOD.json holds only the chosen run and the
fingerprint of its weights: evaluation, export and analysis read the run from it and depend on it
alone, so they rerun exactly when the chosen weights change.
"""

from __future__ import annotations

import math
from typing import Any

from neft.artifacts import SELECTION_DIR, candidate_run, chosen_file, selection_file, validation_file, weights_dir
from neft.config import Config
from neft.errors import UserError
from neft.io import atomic_directory, read_json, write_json
from neft.methods import METHODS
from neft.provenance import model_fingerprint
from neft.selection import Candidate, select_rate
from stages._common import run_stage


def select(config: Config) -> dict[str, Any]:
    selections = {}
    for method in METHODS:
        grid = getattr(config.methods, method).learning_rates
        runs = [candidate_run(method, rate) for rate in grid]
        candidates = [Candidate(rate, _loss(read_validation(run)["best_valid_loss"]), run) for rate, run in zip(grid, runs, strict=True)]
        selection = select_rate(method, candidates)
        selections[method] = {**selection.as_dict(), "weights_sha256": model_fingerprint(weights_dir(selection.chosen.run))}
    with atomic_directory(SELECTION_DIR) as scratch:
        for method, document in selections.items():
            write_json(scratch / selection_file(method).name, document)
    for method, document in selections.items():
        write_json(chosen_file(method), {"run": document["chosen"]["run"], "weights_sha256": document["weights_sha256"]})
    return {method: {"learning_rate": document["chosen"]["learning_rate"], "status": document["status"]}
            for method, document in selections.items()}


def read_validation(run: str) -> dict[str, Any]:
    path = validation_file(run)
    if not path.is_file():
        raise UserError(f"{path} is missing: train the candidate first (dvc repro train_{run.replace('/lr', '@')})")
    return read_json(path)


def _loss(value: float | None) -> float:
    return math.inf if value is None else float(value)


if __name__ == "__main__":
    run_stage(select)
