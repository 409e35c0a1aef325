"""Collect DVC experiments into the budget curve, the controls table and the seed spread.

Usage:
    dvc exp run --queue -S 'ratio=0.01,0.03,0.06,0.12'     # the budget curve; the probe is reused
    dvc exp run --queue -S 'mask.strategy=reversed,random' # controls at the default budget
    dvc exp run --queue -S 'seed=1,2'                      # seeds (the whole pipeline per seed)
    dvc queue start                                        # or: dvc exp run --run-all (waits)
    python scripts/collect_experiments.py [--input exp_show.json] [--out reports/experiments]

Without --input it runs `dvc exp show --json --all-commits` itself: experiments queued from
earlier commits count too, and a configuration run in several commits counts once (the newest).
Writes summary.md and, per task kind and metric, budget_curve_<kind>_<metric>.csv/.png,
controls_<kind>_<metric>.csv, seeds_<kind>_<metric>.csv and differences_<kind>_<metric>.csv under --out, plus exp_show.json (the
input) when it ran dvc itself.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from neft.config import MetricOptions
from neft.evaluation import metric_names
from neft.experiments import (
    budget_curve,
    controls_table,
    experiment_rows,
    paired_differences,
    plot_budget_curve,
    run_significance,
    seed_summary,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="saved output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--out", type=Path, default=Path("reports/experiments"))
    parser.add_argument("--include-workspace", action="store_true")
    args = parser.parse_args()
    text = args.input.read_text() if args.input else subprocess.run(
        ["dvc", "exp", "show", "--json", "--all-commits"], check=True, capture_output=True, text=True).stdout
    rows = experiment_rows(json.loads(text), args.include_workspace)
    if rows.empty:
        sys.exit("no experiment with params and reports/metrics.json found: run some with `dvc exp run` first")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.input:  # keep what the summary was made from, so it can be remade with --input
        (args.out / "exp_show.json").write_text(text)
    sections = []
    for kind, part in rows.groupby("kind"):
        sections += [f"## {kind}: {part['experiment'].nunique()} experiments", ""]
        for metric in (m for m in metric_names(str(kind), MetricOptions(rouge=True)) if m in part and part[m].notna().any()):
            stem = f"{kind}_{metric}"
            curve = budget_curve(part, metric)
            controls = controls_table(part, metric)
            seeds = seed_summary(part, metric)
            differences = paired_differences(part, metric)
            tests = run_significance(part, metric)
            curve.to_csv(args.out / f"budget_curve_{stem}.csv", index=False)
            controls.to_csv(args.out / f"controls_{stem}.csv", index=False)
            seeds.to_csv(args.out / f"seeds_{stem}.csv", index=False)
            differences.to_csv(args.out / f"differences_{stem}.csv", index=False)
            tests.to_csv(args.out / f"significance_{stem}.csv", index=False)
            plot_budget_curve(curve, metric, str(args.out / f"budget_curve_{stem}.png"))
            sections += [
                f"### {metric}", "",
                "Budget curve (cosine masks; mean over seeds):", "", curve.to_markdown(index=False, floatfmt=".3g"),
                "", "Controls, NeFT under each mask strategy:", "", controls.to_markdown(index=False),
                "", "Every method, mean +/- std over seeds:", "", seeds.to_markdown(index=False, floatfmt=".3g"),
                "", "Paired differences within each run, mean +/- std over seeds (wins: runs where NeFT is higher):", "",
                differences.to_markdown(index=False, floatfmt=".3g"),
                "", "Each run's paired bootstrap on its test set (NeFT's score +/- its 95 % interval; difference and p "
                "against each baseline; p > 0.05: within noise):", "", tests.to_markdown(index=False, floatfmt=".3g"),
                "", f"![budget curve, {metric}](budget_curve_{stem}.png)", "",
            ]
    (args.out / "summary.md").write_text("# Experiments\n\n" + "\n".join(sections))
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
