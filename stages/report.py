"""Stage report: one table of every method (trainable share, quality, cost), NeFT's paired-bootstrap
significance against each baseline, and plots.

Usage: python -m stages.report            (writes reports/{metrics.json,cost.json,results.md,results.csv,significance.csv,plots/})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from neft.artifacts import MASK_SUMMARY_FILE, REPORTS_DIR, eval_dir, train_log_dir
from neft.config import Config
from neft.evaluation import metric_names
from neft.io import read_json, write_json
from neft.methods import EVAL_METHODS
from neft.report import (
    cost_document,
    markdown_report,
    method_rows,
    metrics_document,
    plot_losses,
    plot_neurons_per_layer,
    significance_table,
)
from stages._common import run_stage


def report(config: Config, reports_dir: Path = REPORTS_DIR) -> dict[str, Any]:
    kind, options = config.task.kind, config.task.metric_options
    metrics_reported = metric_names(kind, options)
    evals = {method: read_json(eval_dir(method) / "metrics.json") for method in EVAL_METHODS}
    trains = {method: read_json(train_log_dir(method) / "summary.json") for method in EVAL_METHODS if method != "base"}
    mask_summary = read_json(MASK_SUMMARY_FILE)
    table = method_rows(metrics_reported, evals, trains, mask_summary["total_parameters"])
    signatures = {key: value for key, value in evals["base"].items() if key.endswith(("_signature", "_tokenizer"))}
    predictions = {method: pd.read_json(eval_dir(method) / "predictions.jsonl", lines=True, dtype=False) for method in EVAL_METHODS}
    significance = significance_table(kind, predictions, options)
    document = metrics_document(table, mask_summary, metrics_reported, significance)
    plots = reports_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_losses({run: train_log_dir(run) for run in ("probe", "full", "neft", "lora")}, plots / "loss.png")
    plot_neurons_per_layer(mask_summary, plots / "neurons_per_layer.png")
    table.to_csv(reports_dir / "results.csv", index=False)
    significance.to_csv(reports_dir / "significance.csv", index=False)
    (reports_dir / "results.md").write_text(markdown_report(table, config, signatures, mask_summary, significance))
    write_json(reports_dir / "metrics.json", document)
    write_json(reports_dir / "cost.json", cost_document(table))
    return document


if __name__ == "__main__":
    run_stage(report)
