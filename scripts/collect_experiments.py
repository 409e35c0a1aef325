"""Collect DVC experiments into the budget curve, the controls table, the seed spread and the
learning curve.

Usage:
    dvc exp run --queue -S 'ratio=0.01,0.03,0.06,0.12'     # the budget curve; the probe is reused
    dvc exp run --queue -S 'mask.strategy=reversed,random' # controls at the default budget
    dvc exp run --queue -S 'seed=1,2'                      # seeds (the whole pipeline per seed)
    dvc exp run --queue -S train.steps=120 -S methods.full.learning_rate=1e-4 ...   # the learning curve (README)
    dvc queue start                                        # or: dvc exp run --run-all (waits)
    python scripts/collect_experiments.py [--input exp_show.json] [--out experiments-summary] [--experiments 'zh11-*' ...]

Without --input it runs `dvc exp show --json --all-commits` itself: experiments queued from
earlier commits count too, and a configuration run in several commits counts once (the newest).
Where a configuration ran at several learning rates, each method keeps the one with the lowest
validation loss (learning_rates_<kind>.csv lists the candidates), and every table uses those.
An experiment whose reports/metrics.json was made for other settings (it stopped before its report
stage) is left out with a warning (neft.experiments.made_for_other_params).
Writes summary.md and, per task kind and metric, budget_curve_<kind>_<metric>.csv/.png,
learning_curve_<kind>_<metric>.csv/.png, controls_<kind>_<metric>.csv, seeds_<kind>_<metric>.csv
and differences_<kind>_<metric>.csv under --out, plus exp_show.json (the input) when it ran dvc itself.
"""

import argparse
import fnmatch
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
    learning_curve,
    paired_differences,
    plot_budget_curve,
    plot_learning_curve,
    run_significance,
    seed_summary,
    select_learning_rates,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="saved output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--out", type=Path, default=Path("experiments-summary"))
    parser.add_argument("--include-workspace", action="store_true")
    parser.add_argument("--experiments", nargs="+", metavar="PATTERN",
                        help="keep only the experiments whose names match one of these shell patterns, e.g. 'zh11-*'")
    args = parser.parse_args()
    text = args.input.read_text() if args.input else subprocess.run(
        ["dvc", "exp", "show", "--json", "--all-commits"], check=True, capture_output=True, text=True).stdout
    rows = experiment_rows(json.loads(text), args.include_workspace)
    if args.experiments and not rows.empty:
        rows = rows[rows["experiment"].map(lambda name: any(fnmatch.fnmatchcase(name, pattern) for pattern in args.experiments))]
        if rows.empty:
            sys.exit(f"no experiment matches --experiments {' '.join(args.experiments)}")
    if rows.empty:
        sys.exit("no experiment with params and reports/metrics.json found: run some with `dvc exp run` first")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.input:  # keep what the summary was made from, so it can be remade with --input
        (args.out / "exp_show.json").write_text(text)
    sections = []
    for kind, runs in rows.groupby("kind"):
        part, learning_rates = select_learning_rates(runs)
        learning_rates.to_csv(args.out / f"learning_rates_{kind}.csv", index=False)
        sections += [
            f"## {kind}: {runs['experiment'].nunique()} experiments", "",
            "Learning rates: each method at each configuration and step budget keeps the rate with the lowest validation "
            "loss (mean over seeds); the tables below use only those runs:", "",
            learning_rates.to_markdown(index=False, floatfmt=".4g"), "",
        ]
        for metric in (m for m in metric_names(str(kind), MetricOptions(rouge=True)) if m in part and part[m].notna().any()):
            stem = f"{kind}_{metric}"
            curve = budget_curve(part, metric)
            controls = controls_table(part, metric)
            seeds = seed_summary(part, metric)
            differences = paired_differences(part, metric)
            tests = run_significance(part, metric)
            steps_curve = learning_curve(part, metric)
            curve.to_csv(args.out / f"budget_curve_{stem}.csv", index=False)
            controls.to_csv(args.out / f"controls_{stem}.csv", index=False)
            seeds.to_csv(args.out / f"seeds_{stem}.csv", index=False)
            differences.to_csv(args.out / f"differences_{stem}.csv", index=False)
            tests.to_csv(args.out / f"significance_{stem}.csv", index=False)
            steps_curve.to_csv(args.out / f"learning_curve_{stem}.csv", index=False)
            plot_budget_curve(curve, metric, str(args.out / f"budget_curve_{stem}.png"))
            plot_learning_curve(steps_curve, metric, str(args.out / f"learning_curve_{stem}.png"))
            sections += [
                f"### {metric}", "",
                "Budget curve (cosine masks; mean over seeds):", "", curve.to_markdown(index=False, floatfmt=".3g"),
                "", "Controls, NeFT under each mask strategy:", "", controls.to_markdown(index=False),
                "", "Every method, mean +/- std over seeds:", "", seeds.to_markdown(index=False, floatfmt=".3g"),
                "", "Paired differences within each run, mean +/- std over seeds (wins: runs where NeFT is higher; p_seeds: "
                "paired t-test over the seeds, ci95: its 95 % interval of the mean; the training-variance part of the "
                "seed-aware test, docs/statistics.md):", "",
                differences.to_markdown(index=False, floatfmt=".3g"),
                "", "Each run's paired bootstrap on its test set (NeFT's score +/- its 95 % interval; difference and p against "
                "each baseline of the same run, at that run's learning rates; p > 0.05: within noise):", "",
                tests.to_markdown(index=False, floatfmt=".3g"),
                "", "Learning curve, every method at its chosen learning rate per step budget, mean +/- std over seeds:", "",
                steps_curve.to_markdown(index=False, floatfmt=".4g"),
                "", f"![budget curve, {metric}](budget_curve_{stem}.png)", f"![learning curve, {metric}](learning_curve_{stem}.png)", "",
            ]
    (args.out / "summary.md").write_text("# Experiments\n\n" + "\n".join(sections))
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
