"""Jaccard overlap of the masks of different runs: seeds (different probes), budgets or controls,
i.e. the paper's Table 6 across experiments (the `analyze` stage covers one run's budgets and controls).

Usage:
    python scripts/mask_overlap.py main dusky-typo local-halm [--out experiments-summary]

Each argument is a git revision or a DVC experiment name; its artifacts/mask/mask.json is read from
the DVC cache at that revision. Prints the matrix as Markdown and writes mask_overlap.json/.md.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import dvc.api

from neft.analysis import jaccard_matrix
from neft.masks import mask_from_json

MASK_PATH = "artifacts/mask/mask.json"


def experiment_commits() -> dict[str, str]:
    """DVC experiment name -> its commit, from `dvc exp show --json --all-commits`."""
    entries = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], check=True,
                                        capture_output=True, text=True).stdout)
    return {revision["name"]: revision["rev"]
            for entry in entries for experiment in entry.get("experiments") or []
            for revision in experiment.get("revs", []) if revision.get("name")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions or DVC experiment names")
    parser.add_argument("--out", type=Path, default=Path("experiments-summary"))
    args = parser.parse_args()
    if len(args.revisions) < 2:
        sys.exit("give at least two revisions to compare")
    commits = experiment_commits()
    masks = {}
    for name in args.revisions:
        with dvc.api.open(MASK_PATH, repo=".", rev=commits.get(name, name)) as handle:
            masks[name] = mask_from_json(json.load(handle))
    matrix = jaccard_matrix(masks)
    description = {name: f"ratio {mask.ratio}, {mask.strategy}, {mask.num_neurons} neurons" for name, mask in masks.items()}
    table = matrix.to_markdown(floatfmt=".3f")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mask_overlap.json").write_text(json.dumps({"masks": description, "jaccard": matrix.to_dict()}, indent=2))
    (args.out / "mask_overlap.md").write_text(
        "# Mask overlap (Jaccard)\n\n" + "\n".join(f"- {name}: {text}" for name, text in description.items()) + "\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
