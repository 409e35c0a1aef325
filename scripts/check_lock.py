"""Does the committed dvc.lock match the code, params and data it records? Checked from file hashes
alone, without the pipeline's outputs (a fresh clone has none of the DVC-cached ones).

Usage: python scripts/check_lock.py        (exit 0: up to date; 1: lists each stale stage and why)

`dvc status --json` compares every stage's recorded dependencies and outputs with the workspace. On
a clone without outputs it also reports every missing output, and every dependency on one, as
changed; those say nothing about staleness and are left out. What remains is stale:
  - a changed parameter,
  - a changed source dependency (code, your data: any dependency no stage writes),
  - a committed output (`cache: false`, kept in git) whose bytes differ from what the lock records,
  - a changed command, or a stage the lock does not record at all,
  - a stage the lock records that dvc.yaml no longer defines (a renamed or removed stage's results).
.ci/run runs it, so main never carries results that the code did not produce.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

MISSING = {"deleted", "not in cache"}


def lock_outputs(lock: dict[str, Any]) -> set[str]:
    return {out["path"] for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])}


def overlaps_an_output(path: str, outputs: set[str]) -> bool:
    """The path is an output, inside one, or a folder holding one."""
    return any(path == out or path.startswith(out + "/") or out.startswith(path.rstrip("/") + "/") for out in outputs)


def stale_stages(status: dict[str, Any], lock: dict[str, Any], defined: set[str]) -> dict[str, list[str]]:
    """Each stale stage of `dvc status --json` output and why, ignoring what only missing outputs
    explain; and each stage the lock records but dvc.yaml (`defined`) no longer has."""
    outputs, recorded = lock_outputs(lock), set(lock.get("stages", {}))
    stale: dict[str, list[str]] = {stage: ["in dvc.lock but not in dvc.yaml"] for stage in sorted(recorded - defined)}
    for stage, changes in status.items():
        reasons = [] if stage in recorded else ["not in dvc.lock"]
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                reasons.append(change)
                continue
            for path, what in change.get("changed deps", {}).items():
                if isinstance(what, dict):  # a params file: {key: "modified" | "new" | "deleted"}
                    reasons += [f"param {key} {state}" for key, state in what.items()]
                elif not overlaps_an_output(path, outputs):
                    reasons.append(f"{path} {what}")
            reasons += [f"committed output {path} {what}" for path, what in change.get("changed outs", {}).items()
                        if what not in MISSING]
        if reasons:
            stale[stage] = reasons
    return stale


def main() -> int:
    status = json.loads(subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True, check=True).stdout or "{}")
    defined = set(subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True, text=True, check=True).stdout.split())
    lock_file = Path("dvc.lock")
    stale = stale_stages(status, yaml.safe_load(lock_file.read_text()) if lock_file.is_file() else {}, defined)
    if not stale:
        print("dvc.lock matches the code, params and data it records")
        return 0
    print("dvc.lock is stale: rerun the pipeline (dvc repro) and commit dvc.lock with reports/", file=sys.stderr)
    for stage, reasons in stale.items():
        print(f"  {stage}: {', '.join(reasons)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
