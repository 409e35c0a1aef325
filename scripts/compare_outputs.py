"""Which pipeline outputs two revisions wrote with the same bytes, file by file.

Usage:
    python scripts/compare_outputs.py OLD_REV [NEW_REV]    # NEW_REV: the workspace's dvc.lock

Reads each revision's dvc.lock (git) and, for a directory output, its `.dir` manifest from this
repository's DVC cache, so both runs' outputs must have been computed or pulled here. Prints one
line per output: identical, or which files differ, were removed or were added.
"""

import argparse
import json
import subprocess
from pathlib import Path

import yaml

CACHE = Path(".dvc/cache/files/md5")


def lock_outputs(revision: str | None) -> dict[str, str]:
    """{output path: md5} of every stage in dvc.lock at `revision` (None: the workspace's)."""
    text = Path("dvc.lock").read_text() if revision is None else \
        subprocess.run(["git", "show", f"{revision}:dvc.lock"], capture_output=True, text=True, check=True).stdout
    return {out["path"]: out["md5"] for stage in yaml.safe_load(text)["stages"].values() for out in stage.get("outs", [])}


def files_of(md5: str) -> dict[str, str] | None:
    """{relative path: md5} of a directory output; None for a file output; {} if the manifest is not cached."""
    if not md5.endswith(".dir"):
        return None
    manifest = CACHE / md5[:2] / md5[2:]
    return {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())} if manifest.is_file() else {}


def compare(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for path in sorted(set(old) | set(new)):
        if path not in old or path not in new:
            lines.append(f"{path}: only in {'the new' if path in new else 'the old'} run")
        elif old[path] == new[path]:
            lines.append(f"{path}: identical")
        elif (old_files := files_of(old[path])) is None or (new_files := files_of(new[path])) is None:
            lines.append(f"{path}: differs")
        elif not old_files or not new_files:
            lines.append(f"{path}: differs (a manifest is not in this cache)")
        else:
            changed = sorted(name for name in old_files.keys() & new_files.keys() if old_files[name] != new_files[name])
            removed, added = sorted(old_files.keys() - new_files.keys()), sorted(new_files.keys() - old_files.keys())
            lines.append(f"{path}: differ {changed}; removed {removed}; added {added}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?")
    args = parser.parse_args()
    print("\n".join(compare(lock_outputs(args.old), lock_outputs(args.new))))


if __name__ == "__main__":
    main()
