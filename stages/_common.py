"""What every stage entry point shares: offline environment, params, one clean error line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

# The project root on the path, so `python stages/x.py` imports the library without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(variable, "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from neft.config import ConfigError, load_params  # noqa: E402
from neft.data.records import DataError  # noqa: E402
from neft.masks import MaskError  # noqa: E402
from neft.models import ModelConfigError  # noqa: E402

USER_ERRORS = (ConfigError, DataError, MaskError, ModelConfigError)

if not sys.stderr.isatty():  # logs stay readable under dvc repro and CI; tqdm bars quiet themselves
    import transformers

    transformers.utils.logging.disable_progress_bar()


def run_stage(work: Callable[[dict[str, Any]], dict[str, Any]], usage: str = "", argc: int = 0) -> None:
    """Run `work(params)`, print its summary as JSON; a user error exits 2 with one clear line."""
    if len(sys.argv) - 1 != argc:
        sys.exit(f"usage: python {sys.argv[0]} {usage}".rstrip())
    try:
        summary = work(load_params())
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
    print(json.dumps(summary, indent=2, default=str))
