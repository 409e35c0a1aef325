"""The comparison report: one row per method (trainable share, quality, cost), plus plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from neft.evaluation import METRICS_BY_KIND  # noqa: E402
from neft.io import read_json, write_json  # noqa: E402
from neft.methods import EVAL_METHODS  # noqa: E402
from neft.pipeline import MASK_DIR, REPORTS_DIR, eval_dir, train_log_dir  # noqa: E402

COST_COLUMNS = ("learning_rate", "steps", "train_seconds", "seconds_per_step", "peak_memory_mb", "lora_rank")


def method_rows(kind: str, evals: dict[str, dict[str, Any]], trains: dict[str, dict[str, Any]], total_parameters: int) -> pd.DataFrame:
    """One row per evaluated method: trainable parameters and %, quality metrics, training cost."""
    rows = []
    for method, metrics in evals.items():
        trained = trains.get(method, {})
        trainable = trained.get("trainable_parameters", 0)
        row = {"method": method, "trainable_parameters": trainable, "trainable_percent": 100 * trainable / total_parameters}
        row.update({name: metrics[name] for name in METRICS_BY_KIND[kind]})
        row.update({column: trained.get(column) for column in COST_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_document(table: pd.DataFrame, mask_summary: dict[str, Any], kind: str) -> dict[str, Any]:
    """reports/metrics.json: `{method: {metric: value}}`, so DVC shows keys such as neft.bleu."""
    keep = ("trainable_percent", *METRICS_BY_KIND[kind], "train_seconds", "peak_memory_mb")
    document: dict[str, Any] = {
        row["method"]: {name: _plain(row[name]) for name in keep if pd.notna(row[name])} for row in table.to_dict("records")
    }
    document["mask"] = {name: mask_summary[name] for name in ("ratio", "num_neurons", "trainable_percent")}
    return document


def _plain(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, float) else value


def markdown_report(table: pd.DataFrame, params: dict[str, Any], signatures: dict[str, str], mask_summary: dict[str, Any]) -> str:
    lines = [
        f"# NeFT vs full fine-tuning vs LoRA: {params['model']['name']} on {params['task']['name']}",
        "",
        f"ratio = {params['ratio']} -> {mask_summary['num_neurons']} neurons, "
        f"{mask_summary['trainable_parameters']:,} trainable parameters "
        f"({mask_summary['trainable_percent']:.2f} % of {mask_summary['total_parameters']:,}); "
        f"seed {params['seed']} (1 seed); {params['train']['steps']} steps of batch {params['train']['batch_size']}; "
        f"probe: {params['probe']['steps']} steps at lr {params['probe']['learning_rate']}.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        "Learning rates are per method (`methods.*.learning_rate`); LoRA's rank is chosen so its trainable",
        "count matches NeFT's. Peak memory is the process's peak RSS on CPU (max allocated on GPU).",
        "",
        *[f"- {name}: `{signature}`" for name, signature in signatures.items()],
        "",
        "![loss](plots/loss.png)",
        "![neurons per layer](plots/neurons_per_layer.png)",
        "",
    ]
    return "\n".join(lines)


def plot_losses(log_dirs: dict[str, Path], out: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    for run, log_dir in log_dirs.items():
        tsv = log_dir / "plots" / "metrics" / "loss.tsv"
        if tsv.is_file():
            frame = pd.read_csv(tsv, sep="\t")
            axis.plot(frame["step"], frame["loss"], label=run)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.legend()
    axis.set_title("Training loss per method")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def plot_neurons_per_layer(mask_summary: dict[str, Any], out: Path) -> None:
    per_layer = mask_summary["neurons_per_layer"]
    figure, axis = plt.subplots(figsize=(8, 4))
    bottom = None
    for kind, counts in per_layer.items():
        layers = list(range(len(counts)))
        axis.bar(layers, counts, bottom=bottom, label=f"{kind} neurons")
        bottom = counts if bottom is None else [a + b for a, b in zip(bottom, counts)]
    axis.set_xlabel("layer")
    axis.set_ylabel("selected neurons")
    axis.set_title(f"NeFT mask: {mask_summary['num_neurons']} neurons ({mask_summary['trainable_percent']:.2f} % of parameters)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def write_report(params: dict[str, Any], reports_dir: Path = REPORTS_DIR) -> dict[str, Any]:
    kind = params["task"]["kind"]
    evals = {method: read_json(eval_dir(method) / "metrics.json") for method in EVAL_METHODS}
    trains = {method: read_json(train_log_dir(method) / "summary.json") for method in EVAL_METHODS if method != "base"}
    mask_summary = read_json(MASK_DIR / "summary.json")
    table = method_rows(kind, evals, trains, mask_summary["total_parameters"])
    signatures = {key: value for key, value in evals["base"].items() if key.endswith(("_signature", "_tokenizer"))}
    document = metrics_document(table, mask_summary, kind)
    plots = reports_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_losses({run: train_log_dir(run) for run in ("probe", "full", "neft", "lora")}, plots / "loss.png")
    plot_neurons_per_layer(mask_summary, plots / "neurons_per_layer.png")
    table.to_csv(reports_dir / "results.csv", index=False)
    (reports_dir / "results.md").write_text(markdown_report(table, params, signatures, mask_summary))
    write_json(reports_dir / "metrics.json", document)
    return document
