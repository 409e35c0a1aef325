"""Compare runs pairwise: mask overlap, score resolution, layer distribution and NeFT quality with a
paired bootstrap per pair and, over the pairs (seeds), the seed-aware test (neft/comparison.py).

Usage:
    python scripts/compare_runs.py BASELINE:SYSTEM [BASELINE:SYSTEM ...] [--out DIR] [--masks-only]

Each side is a git revision or a DVC experiment name, read through the DVC cache at that revision.
Pairs should share a seed and differ in one choice, e.g. the score precision (issue 9):

    dvc exp run -n s1-fp32 -S seed=1 -S score.form=fp32 evaluate@neft
    dvc exp run -n s1-stable -S seed=1 -S score.form=stable evaluate@neft
    python scripts/compare_runs.py s0-fp32:s0-stable s1-fp32:s1-stable s2-fp32:s2-stable --out three_seeds

--masks-only skips predictions (runs that stopped at the mask stage, e.g. `dvc exp run ... mask`).
--baseline-method lora compares each system's NeFT with the baseline run's matched LoRA instead of
its NeFT (the probe options against LoRA, issue 14):

    python scripts/compare_runs.py p14-full-s0:p14-gradient-s0 --baseline-method lora --out DIR

Writes masks.csv, resolution.csv, layers.csv/.png and, with predictions, quality.csv and
differences.csv, and summary.md with all of them.
"""

import argparse
import io
import json
import sys
from pathlib import Path

import dvc.api
import pandas as pd
import yaml

from mask_overlap import experiment_commits
from neft.artifacts import BUDGET_FILE, selection_file, train_log_dir
from neft.comparison import (
    RunOutputs,
    layer_distribution,
    mask_table,
    plot_layer_distribution,
    probe_costs,
    write_quality_report,
)
from neft.config import MetricOptions
from neft.masks import mask_from_json


def read_text(path: str, revision: str) -> str:
    with dvc.api.open(path, repo=".", rev=revision) as handle:
        return handle.read()


def read_summary(path: str, revision: str) -> dict:
    try:
        return json.loads(read_text(path, revision))
    except FileNotFoundError:  # a run that did not train it
        return {}


def read_budget_at(revision: str) -> int:
    return json.loads(read_text(str(BUDGET_FILE), revision))["trainable_parameters"]


def chosen_run_at(method: str, revision: str) -> str:
    """The run of `method` that a revision evaluated: its chosen rate's, or, before rate grids, the method's one run."""
    selection = read_summary(str(selection_file(method)), revision)
    return selection["chosen"]["run"] if selection else method


def load_run(name: str, commits: dict[str, str], with_predictions: bool, method: str = "neft") -> RunOutputs:
    """`method`: whose predictions the comparison reads (the run's NeFT, or its matched LoRA)."""
    revision = commits.get(name, name)
    predictions = None
    if with_predictions:
        predictions = pd.read_json(io.StringIO(read_text(f"reports/eval/{method}/predictions.jsonl", revision)), lines=True, dtype=False)
    params = yaml.safe_load(read_text("params.yaml", revision))
    probe = read_summary("reports/train/probe/summary.json", revision)
    lora = read_summary(f"{train_log_dir(chosen_run_at('lora', revision))}/summary.json", revision)
    return RunOutputs(
        name=name if method == "neft" else f"{name} ({method})",  # how the pairs name this side
        mask=mask_from_json(json.loads(read_text("artifacts/mask/mask.json", revision))),
        mask_summary=json.loads(read_text("artifacts/mask/summary.json", revision)),
        score_summary=json.loads(read_text("artifacts/scores/summary.json", revision)),
        predictions=predictions,
        costs=probe_costs(params, probe, lora, read_budget_at(revision)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="BASELINE:SYSTEM, each a git revision or DVC experiment name")
    parser.add_argument("--out", type=Path, default=Path("comparison"))
    parser.add_argument("--masks-only", action="store_true", help="compare masks and scores only (no NeFT predictions)")
    parser.add_argument("--baseline-method", default="neft", choices=["neft", "lora"],
                        help="compare each system's NeFT with the baseline run's NeFT (default) or matched LoRA")
    parser.add_argument("--kind", default="translation", choices=["translation", "summarization"])
    parser.add_argument("--bleu-tokenize", default="13a")
    parser.add_argument("--rouge", action="store_true", help="translation: also compare ROUGE (CJK per character)")
    args = parser.parse_args()
    if any(pair.count(":") != 1 for pair in args.pairs):
        sys.exit("error: each pair is BASELINE:SYSTEM")
    commits = experiment_commits()
    runs: dict[tuple[str, str], RunOutputs] = {}  # (name, whose predictions)
    pairs = []
    for pair in args.pairs:
        sides = list(zip(pair.split(":"), (args.baseline_method, "neft"), strict=True))
        for name, method in sides:
            if (name, method) not in runs:
                runs[name, method] = load_run(name, commits, not args.masks_only, method)
        pairs.append((runs[sides[0]], runs[sides[1]]))
    by_name = {name: run for (name, _), run in runs.items()}  # masks and costs do not depend on the method compared

    args.out.mkdir(parents=True, exist_ok=True)
    masks = mask_table(pairs)
    scored = [{key: value for key, value in run.score_summary.items() if key != "made_from"} for run in by_name.values()]
    resolution = pd.DataFrame([{"run": name, **run.costs, **score, "tied_at_cutoff": run.mask_summary.get("tied_at_cutoff"),
                                "decided_by_tiebreak": run.mask_summary.get("decided_by_tiebreak"), "k": run.mask.num_neurons}
                               for (name, run), score in zip(by_name.items(), scored, strict=True)])
    layers = layer_distribution({name: run.mask for name, run in by_name.items()})
    masks.to_csv(args.out / "masks.csv", index=False)
    resolution.to_csv(args.out / "resolution.csv", index=False)
    layers.to_csv(args.out / "layers.csv")
    plot_layer_distribution(layers, str(args.out / "layers.png"))
    sections = ["# Run comparison", "", "Pairs: " + ", ".join(f"{b.name} -> {s.name}" for b, s in pairs), "",
                "## Masks", "", masks.to_markdown(index=False, floatfmt=".3f"), "",
                "## Score resolution", "", resolution.to_markdown(index=False, floatfmt=".3g"), "",
                "## Selected neurons per layer", "", layers.to_markdown(), "", "![layers](layers.png)", ""]
    if not args.masks_only:
        sections += [f"## NeFT quality against the baseline's {args.baseline_method}, paired bootstrap per seed and "
                     "seed-aware over seeds (system - baseline; two-sided p)", "",
                     *write_quality_report(args.kind, pairs, MetricOptions(args.bleu_tokenize, args.rouge), args.out)]
    (args.out / "summary.md").write_text("\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
