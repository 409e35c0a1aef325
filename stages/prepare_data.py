"""Stage prepare_data: the task's deterministic train/valid/test splits as JSONL.

Usage: python -m stages.prepare_data      (reads params.yaml: task, seed; writes data/prepared/)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from neft.artifacts import DATA_DIR
from neft.config import Config
from neft.data.records import write_jsonl
from neft.data.sources import SPLITS, build_splits, source_manifest
from neft.io import atomic_directory, write_json
from stages._common import run_stage


def prepare_data(config: Config, out_dir: Path = DATA_DIR) -> dict[str, Any]:
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
