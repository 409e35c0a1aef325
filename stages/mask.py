"""Stage mask: the k most changed neurons over the global pool, k from `ratio`.

Usage: python -m stages.mask              (writes artifacts/mask/{mask,summary}.json and artifacts/budget.json)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from neft.artifacts import BUDGET_FILE, MASK_DIR, MASK_FILE, MODEL_SHAPE_FILE, SCORES_DIR, SCORES_FILE
from neft.config import Config
from neft.io import atomic_directory, read_json, write_json
from neft.masks import ModelShape, build_mask_with_ties, save_mask, summarize_mask
from stages._common import run_stage

# Warn when the tie-break at the cutoff chose more than this share of k.
TIEBREAK_WARNING_SHARE = 0.001
logger = logging.getLogger(__name__)


def mask(config: Config, out_dir: Path = MASK_DIR, budget_file: Path = BUDGET_FILE) -> dict[str, Any]:
    ratio = config.ratio
    scores = pd.read_parquet(SCORES_FILE)
    selected, ties = build_mask_with_ties(scores, ModelShape(**read_json(MODEL_SHAPE_FILE)), ratio, config.mask.strategy, config.seed)
    selected.made_from = read_json(SCORES_DIR / "summary.json")["made_from"]
    summary = {**summarize_mask(selected), "tied_at_cutoff": ties.tied_at_cutoff, "decided_by_tiebreak": ties.decided_by_tiebreak}
    if ties.decided_by_tiebreak > TIEBREAK_WARNING_SHARE * selected.num_neurons:
        logger.warning(
            "warning: %d of the mask's %d neurons were chosen by position, not score (%d neurons tie at the cutoff); "
            "the scores do not resolve the ranking: use score.form=stable or a probe that changes the weights more",
            ties.decided_by_tiebreak, selected.num_neurons, ties.tied_at_cutoff)
    with atomic_directory(out_dir) as scratch:
        save_mask(selected, scratch / MASK_FILE.name)
        write_json(scratch / "summary.json", summary)
    write_json(budget_file, {"ratio": ratio, "num_neurons": selected.num_neurons, "trainable_parameters": selected.trainable_parameters})
    return summary


if __name__ == "__main__":
    run_stage(mask)
