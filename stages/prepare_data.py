"""Stage prepare_data: the task's deterministic train/valid/test splits as JSONL.

Usage: python -m stages.prepare_data      (reads params.yaml: task, seed; writes data/prepared/)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from neft.artifacts import DATA_DIR
from neft.config import Config, TaskConfig
from neft.data.records import write_jsonl
from neft.data.sources import SPLITS, build_splits, source_manifest
from neft.errors import ConfigError
from neft.io import atomic_directory, write_json
from stages._common import run_stage

# This stage's DVC dependency for the user's own files (dvc.yaml): a file elsewhere would be read but
# not tracked, so editing it would leave `dvc status` up to date.
USER_DATA_DIR = Path("data/custom")


def require_tracked_files(task: TaskConfig) -> None:
    """Refuse task.files outside USER_DATA_DIR (compared as paths, not resolved: a symlink inside it
    is the user's choice)."""
    if task.source != "jsonl" or not task.files:
        return
    tracked = os.path.abspath(USER_DATA_DIR)
    for split, name in sorted(task.files.items()):
        if os.path.commonpath([tracked, os.path.abspath(name)]) != tracked:
            raise ConfigError(f"task.files.{split} = {name!r} is outside {USER_DATA_DIR}/, this stage's DVC dependency, so "
                              f"editing it would not rerun the pipeline; move it under {USER_DATA_DIR}/ "
                              f"(e.g. {USER_DATA_DIR / 'mine' / Path(name).name})")


def prepare_data(config: Config, out_dir: Path = DATA_DIR) -> dict[str, Any]:
    require_tracked_files(config.task)
    splits = build_splits(config.task, config.seed)
    summary = {"task": config.task.name, "seed": config.seed, **{f"{s}_examples": len(splits[s]) for s in SPLITS}}
    with atomic_directory(out_dir) as scratch:
        fingerprint = hashlib.sha256()
        for split in SPLITS:
            write_jsonl(scratch / f"{split}.jsonl", splits[split])
            fingerprint.update((scratch / f"{split}.jsonl").read_bytes())
        summary["fingerprint"] = fingerprint.hexdigest()  # sha256 of train, valid and test JSONL in order
        write_json(scratch / "summary.json", {**summary, **source_manifest(config.task)})
    return summary


if __name__ == "__main__":
    run_stage(prepare_data)
