"""What every stage entry point shares: params in, a JSON summary out, one clean line for a user error."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from neft.config import load_config
from neft.errors import UserError, report_user_error

USER_ERROR_EXIT = 2  # a crash keeps Python's traceback and exit status 1

if not sys.stderr.isatty():  # logs stay readable under dvc repro and CI; tqdm bars quiet themselves
    import transformers

    transformers.utils.logging.disable_progress_bar()


def plots_to_files() -> None:
    """Plots are files, never windows: matplotlib's Agg backend, for this process (now, if matplotlib
    is imported already) and for the processes it starts. The library sets no backend on import."""
    os.environ["MPLBACKEND"] = "Agg"
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")


def run_stage(work: Callable[..., dict[str, Any]], usage: str = "", argc: int | tuple[int, ...] = 0) -> None:
    """Run `work(*args, config)`, print its summary as JSON; a user error exits 2 with one clear line."""
    args = sys.argv[1:]
    if len(args) not in ((argc,) if isinstance(argc, int) else argc):
        print(f"usage: python -m {sys.modules['__main__'].__spec__.name} {usage}".rstrip(), file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    try:
        config = load_config()
        plots_to_files()  # the device and determinism: neft.runtime.setup_runtime, in the stages that compute
        summary = work(*args, config)
    except UserError as error:
        report_user_error(error)
        sys.exit(USER_ERROR_EXIT)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        # Outputs are written through scratch directories and renames: nothing half-written remains.
        print(f"error: no space left on device ({error.filename or 'while writing'}); free some and rerun", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    print(json.dumps(summary, indent=2, default=str))
