"""Stage report: the verdict (each method at its chosen rate: score with 95 % interval, cost end to end,
NeFT against each baseline in a plain word), the rate search, one row per method, NeFT's
paired-bootstrap significance against each baseline, and plots.

Usage: python -m stages.report            (writes reports/{metrics.json,cost.json,results.md,results.csv,significance.csv,plots/})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from neft.artifacts import MASK_SUMMARY_FILE, REPORTS_DIR, eval_dir, selection_file, train_log_dir
from neft.config import Config
from neft.evaluation import metric_names
from neft.io import atomic_directory, read_json, write_json, write_text
from neft.methods import EVAL_METHODS, METHODS
from neft.report import (
    cost_document,
    hardware_line,
    markdown_report,
    method_rows,
    metrics_document,
    plot_losses,
    plot_neurons_per_layer,
    plot_validation_losses,
    rate_search_table,
    significance_table,
    verdict_table,
)
from neft.selection import RateSelection
from stages._common import run_stage


def report(config: Config, reports_dir: Path = REPORTS_DIR) -> dict[str, Any]:
    kind, options = config.task.kind, config.task.metric_options
    metrics_reported = metric_names(kind, options)
    evals = {method: read_json(eval_dir(method) / "metrics.json") for method in EVAL_METHODS}
    selections = {method: RateSelection.from_dict(read_json(selection_file(method))) for method in METHODS}
    searches = {method: [read_json(train_log_dir(c.run) / "summary.json") for c in selection.candidates]
                for method, selection in selections.items()}
    trains = {method: read_json(train_log_dir(selection.chosen.run) / "summary.json") for method, selection in selections.items()}
    probe = read_json(train_log_dir("probe") / "summary.json")
    mask_summary = read_json(MASK_SUMMARY_FILE)
    table = method_rows(metrics_reported, evals, trains, mask_summary["total_parameters"])
    signatures = {key: value for key, value in evals["base"].items() if key.endswith(("_signature", "_tokenizer"))}
    predictions = {method: pd.read_json(eval_dir(method) / "predictions.jsonl", lines=True, dtype=False) for method in EVAL_METHODS}
    significance = significance_table(kind, predictions, options)
    document = metrics_document(table, mask_summary, metrics_reported, significance, selections)
    cost = cost_document(trains, probe, searches)
    verdict = verdict_table(document, metrics_reported, selections, cost)
    markdown = markdown_report(table, config, signatures, mask_summary, significance, verdict, rate_search_table(selections),
                               hardware_line(trains["neft"]))
    # Everything is computed before anything is written, and each output is replaced whole (the plots as
    # one folder): a report that fails leaves the previous one as it was (dvc.yaml keeps them, persist).
    with atomic_directory(reports_dir / "plots") as plots:
        plot_losses({"probe": train_log_dir("probe")} | {method: train_log_dir(s.chosen.run) for method, s in selections.items()},
                    plots / "loss.png")
        plot_validation_losses(selections, train_log_dir, plots / "valid_loss.png")
        plot_neurons_per_layer(mask_summary, plots / "neurons_per_layer.png")
    write_text(reports_dir / "results.csv", table.to_csv(index=False))
    write_text(reports_dir / "significance.csv", significance.to_csv(index=False))
    write_text(reports_dir / "results.md", markdown)
    write_json(reports_dir / "metrics.json", document)
    write_json(reports_dir / "cost.json", cost)
    return document


if __name__ == "__main__":
    run_stage(report)
