"""Where each stage's artifacts live, defined once, and readers of the small ones that several
stages share. Paths are relative to the project root, where DVC runs every stage.
"""

from __future__ import annotations

from pathlib import Path

from neft.errors import UserError
from neft.io import read_json

DATA_DIR = Path("data/prepared")
BASE_MODEL_DIR = Path("artifacts/model")
MODEL_SHAPE_FILE = BASE_MODEL_DIR / "neft_shape.json"
PROBE_DIR = Path("artifacts/probe")
SCORES_DIR = Path("artifacts/scores")
SCORES_FILE = SCORES_DIR / "scores.parquet"
MASK_DIR = Path("artifacts/mask")
MASK_FILE = MASK_DIR / "mask.json"
MASK_SUMMARY_FILE = MASK_DIR / "summary.json"
# The budget alone (k and its parameter count), apart from which neurons: the matched LoRA depends on
# this file only, so a control mask (`mask.strategy`) at the same ratio does not retrain LoRA.
BUDGET_FILE = Path("artifacts/budget.json")
REPORTS_DIR = Path("reports")
ANALYSIS_DIR = REPORTS_DIR / "analysis"
# Training checkpoints: outside every stage's outputs, so DVC neither deletes them before a rerun
# nor counts them; a stage removes its own once its result is saved. Git ignores them.
CHECKPOINTS_DIR = Path("checkpoints")


# Each method's rate choice (stage select): every candidate's validation loss and the chosen run, for
# the report; and apart, the chosen run and its weights' fingerprint alone, which is all that
# evaluation, export and analysis depend on (so a rate added to a grid that does not win reruns none).
SELECTION_DIR = REPORTS_DIR / "selection"


def candidate_run(method: str, learning_rate: float) -> str:
    """The training run of `method` at one rate of its grid, e.g. "neft/lr0.001". The rate is written
    as Python's str(float), as DVC writes `${item}` of the grid, so both name the same directories."""
    return f"{method}/lr{learning_rate}"


def selection_file(method: str) -> Path:
    return SELECTION_DIR / f"{method}.json"


def chosen_file(method: str) -> Path:
    return Path("artifacts/chosen") / f"{method}.json"


def chosen_run(method: str) -> str:
    """The candidate run that validation loss chose for `method` (written by stage select)."""
    path = chosen_file(method)
    if not path.is_file():
        raise UserError(f"{path} is missing: run the select stage first (dvc repro select)")
    return read_json(path)["run"]


def weights_dir(run: str) -> Path:
    """Trained weights of a run: the probe's model, or a candidate's model, delta or adapter."""
    return PROBE_DIR if run == "probe" else Path("artifacts/train") / run


def export_dir(method: str) -> Path:
    """A trained method as a plain transformers model directory (merged), to take away."""
    return Path("artifacts/export") / method


def validation_file(run: str) -> Path:
    """A candidate's validation loss at its kept checkpoint, beside its weights: all that the rate choice
    reads of a run. No timings, so a rerun that trains the same weights leaves the choice up to date."""
    return weights_dir(run) / "validation.json"


def checkpoint_dir(run: str) -> Path:
    return CHECKPOINTS_DIR / run


def train_log_dir(run: str) -> Path:
    return REPORTS_DIR / "train" / run


def eval_dir(method: str) -> Path:
    return REPORTS_DIR / "eval" / method


def read_budget(path: Path = BUDGET_FILE) -> int:
    """NeFT's trainable-parameter count, which the matched LoRA must meet."""
    if not Path(path).is_file():
        raise UserError(f"{path} is missing: run the mask stage first (dvc repro mask)")
    budget = read_json(path).get("trainable_parameters")
    if not isinstance(budget, int) or budget <= 0:
        raise UserError(f"{path}: trainable_parameters must be a positive integer, got {budget!r}")
    return budget
