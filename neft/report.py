"""The comparison report's parts: one row per method (trainable share, quality, cost), NeFT's
significance against each baseline, the metrics document DVC reads, and plots. `stages/report.py`
reads the artifacts and writes them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd

from neft.config import MetricOptions
from neft.significance import compare_predictions

if TYPE_CHECKING:
    from neft.config import Config

COST_COLUMNS = ("learning_rate", "steps", "train_seconds", "seconds_per_step", "peak_memory_mb", "lora_rank")
# What each trained method ran with, in metrics.json: the experiment collector checks it against the
# experiment's params, since a run that stopped before the report keeps its baseline's metrics.json.
MADE_WITH = ("learning_rate", "steps", "seed")
# (system, baseline): NeFT against each baseline on the same test segments.
COMPARISONS = (("neft", "lora"), ("neft", "full"), ("neft", "base"))


def method_rows(metrics_reported: tuple[str, ...], evals: dict[str, dict[str, Any]], trains: dict[str, dict[str, Any]],
                total_parameters: int) -> pd.DataFrame:
    """One row per evaluated method: trainable parameters and %, quality metrics, training cost."""
    rows = []
    for method, metrics in evals.items():
        trained = trains.get(method, {})
        trainable = trained.get("trainable_parameters", 0)
        row = {"method": method, "trainable_parameters": trainable, "trainable_percent": 100 * trainable / total_parameters}
        row.update({name: metrics[name] for name in metrics_reported})
        # The kept checkpoint's validation loss: what chooses a learning rate (neft.experiments), never a test score.
        row["valid_loss"] = trained.get("best_valid_loss")
        row.update({column: trained.get(column) for column in (*COST_COLUMNS, "seed")})
        rows.append(row)
    return pd.DataFrame(rows)


def significance_table(kind: str, predictions: dict[str, pd.DataFrame], options: MetricOptions = MetricOptions()) -> pd.DataFrame:
    """Paired bootstrap of NeFT against each baseline: one row per (comparison, metric)."""
    rows = []
    for system, baseline in COMPARISONS:
        for comparison in compare_predictions(kind, predictions[baseline], predictions[system], options):
            rows.append({"comparison": f"{system} - {baseline}", **comparison.as_dict()})
    return pd.DataFrame(rows)


def metrics_document(table: pd.DataFrame, mask_summary: dict[str, Any], metrics_reported: tuple[str, ...],
                     significance: pd.DataFrame) -> dict[str, Any]:
    """reports/metrics.json: `{method: {metric: value}}`, so DVC shows keys such as neft.bleu,
    neft.bleu_ci95 (half-width of the bootstrap 95 % interval), neft.valid_loss,
    significance.neft_vs_lora.bleu_p, and what each method and the mask were made with (neft.learning_rate,
    neft.steps, neft.seed, mask.ratio, mask.strategy)."""
    keep = ("trainable_percent", *metrics_reported, "valid_loss", *MADE_WITH)
    document: dict[str, Any] = {
        row["method"]: {name: _made_with(name, row[name]) if name in MADE_WITH else _plain(row[name])
                        for name in keep if pd.notna(row[name])}
        for row in table.to_dict("records")
    }
    # The ties say whether the scores resolved the ranking (issue 9): 1 tied, 0 by tie-break when they do.
    mask_keys = ("ratio", "strategy", "num_neurons", "trainable_percent", "tied_at_cutoff", "decided_by_tiebreak")
    document["mask"] = {name: mask_summary[name] for name in mask_keys}
    document["significance"] = {}
    for row in significance.to_dict("records"):
        system, baseline = row["comparison"].split(" - ")
        for method, interval in ((system, row["system_ci95"]), (baseline, row["baseline_ci95"])):
            document[method][f"{row['metric']}_ci95"] = _plain(interval)  # one resampling seed: equal in every comparison
        entry = document["significance"].setdefault(row["comparison"].replace(" - ", "_vs_"), {})
        entry.update({f"{row['metric']}_difference": _plain(row["difference"]), f"{row['metric']}_p": _plain(row["p_value"])})
    return document


def cost_document(table: pd.DataFrame) -> dict[str, Any]:
    """reports/cost.json: each trained method's training time and peak memory. Apart from
    metrics.json, whose bytes a seed fixes; these are measurements and differ between runs."""
    columns = ("train_seconds", "seconds_per_step", "peak_memory_mb")
    return {row["method"]: {name: _plain(row[name]) for name in columns if pd.notna(row[name])}
            for row in table.to_dict("records") if row["method"] != "base"}


def _plain(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, float) else value


def _made_with(name: str, value: Any) -> float | int:
    """Unrounded: a learning rate such as 5e-05 must survive to be compared with the params."""
    return float(value) if name == "learning_rate" else int(value)


def markdown_report(table: pd.DataFrame, config: Config, signatures: dict[str, str], mask_summary: dict[str, Any],
                    significance: pd.DataFrame) -> str:
    lines = [
        f"# NeFT vs full fine-tuning vs LoRA: {config.model.name} on {config.task.name}",
        "",
        f"ratio = {config.ratio} -> {mask_summary['num_neurons']} neurons, "
        f"{mask_summary['trainable_parameters']:,} trainable parameters "
        f"({mask_summary['trainable_percent']:.2f} % of {mask_summary['total_parameters']:,}); "
        f"seed {config.seed} (1 seed); {config.train.steps} steps of batch {config.train.batch_size}; "
        f"probe: {config.probe.steps} steps at lr {config.probe.learning_rate}.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        "Learning rates are per method (`methods.*.learning_rate`); LoRA's rank is chosen so its trainable",
        "count matches NeFT's. Peak memory is the training window's (neft.measure: RSS high-water mark after set-up on "
        "CPU, max allocated on GPU), as in the benchmark.",
        "",
        *[f"- {name}: `{signature}`" for name, signature in signatures.items()],
        "",
        f"Paired bootstrap, NeFT against each baseline on the same {int(significance['segments'].iloc[0])} test segments "
        f"({int(significance['samples'].iloc[0])} resamples; two-sided p; ci95: half-width of each system's 95 % interval). "
        "A p-value above 0.05 means the difference is within noise:",
        "",
        significance[["comparison", "metric", "baseline", "system", "difference", "p_value", "baseline_ci95", "system_ci95"]]
        .to_markdown(index=False, floatfmt=".4g"),
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
        bottom = counts if bottom is None else [a + b for a, b in zip(bottom, counts, strict=True)]
    axis.set_xlabel("layer")
    axis.set_ylabel("selected neurons")
    axis.set_title(f"NeFT mask: {mask_summary['num_neurons']} neurons ({mask_summary['trainable_percent']:.2f} % of parameters)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
