"""The comparison report's parts: the verdict (each method at its chosen rate, its score with a 95 %
interval, its cost end to end, NeFT against each baseline in a plain word), one row per method, the
rate search, NeFT's significance against each baseline, the metrics document DVC reads, and plots.
`stages/report.py` reads the artifacts and writes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pandas as pd

from neft.config import MetricOptions
from neft.selection import RateSelection
from neft.significance import compare_predictions

if TYPE_CHECKING:
    from neft.config import Config

COST_COLUMNS = ("learning_rate", "steps", "train_seconds", "seconds_per_step", "peak_memory_mb", "lora_rank")
# What each trained method ran with, in metrics.json: the experiment collector checks it against the
# experiment's params, since a run that stopped before the report keeps its baseline's metrics.json.
MADE_WITH = ("learning_rate", "steps", "seed")
# (system, baseline): NeFT against each baseline on the same test segments.
COMPARISONS = (("neft", "lora"), ("neft", "full"), ("neft", "base"))
# A difference is called better or worse below this p-value, else within noise.
ALPHA = 0.05


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
                     significance: pd.DataFrame, selections: dict[str, RateSelection]) -> dict[str, Any]:
    """reports/metrics.json: `{method: {metric: value}}`, so DVC shows keys such as neft.bleu,
    neft.bleu_ci95 (half-width of the bootstrap 95 % interval), neft.valid_loss,
    significance.neft_vs_lora.bleu_p, and what each method and the mask were made with (neft.learning_rate,
    the rate validation loss chose, and neft.learning_rate_bracketed; neft.steps, neft.seed, mask.ratio,
    mask.strategy)."""
    keep = ("trainable_percent", *metrics_reported, "valid_loss", *MADE_WITH)
    document: dict[str, Any] = {
        row["method"]: {name: _made_with(name, row[name]) if name in MADE_WITH else _plain(row[name])
                        for name in keep if pd.notna(row[name])}
        for row in table.to_dict("records")
    }
    for method, selection in selections.items():
        document[method]["learning_rate_bracketed"] = selection.bracketed
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


def cost_document(trains: dict[str, dict[str, Any]], probe: dict[str, Any], searches: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """reports/cost.json: what each method cost. Apart from metrics.json, whose bytes a seed fixes;
    these are measurements and differ between runs. `end_to_end` is the chosen run's training, with
    the probe's for NeFT (its score and mask stages take seconds); `search` adds every rate tried."""
    document = {}
    for method, chosen in trains.items():
        before = [probe] if method == "neft" else []
        document[method] = {
            "train_seconds": chosen["train_seconds"],
            "seconds_per_step": chosen["seconds_per_step"],
            "peak_memory_mb": chosen["peak_memory_mb"],
            "end_to_end_seconds": round(sum(run["train_seconds"] for run in (*before, chosen)), 2),
            "end_to_end_peak_memory_mb": max(run["peak_memory_mb"] for run in (*before, chosen)),
            "search_seconds": round(sum(run["train_seconds"] for run in (*before, *searches[method])), 2),
            "search_runs": len(searches[method]),
        }
    return document


def hardware_line(summary: dict[str, Any]) -> str:
    """Where the runs were computed, from a training summary (neft.measure.device_description)."""
    hardware = summary.get("hardware", {})
    features = ", ".join(hardware.get("bf16_features", [])) or "none"
    kernels = f"torch CPU capability {hardware['cpu_capability']}, bf16 features: {features}; " if "cpu_capability" in hardware else ""
    return f"{hardware.get('name', summary.get('device', 'an unrecorded device'))} ({kernels}autocast {summary.get('autocast', 'none')})"


def verdict(difference: float, p_value: float, alpha: float = ALPHA) -> str:
    """The plain word for NeFT minus a baseline."""
    if p_value >= alpha or difference == 0:
        return "within noise"
    return "better" if difference > 0 else "worse"


def verdict_table(document: dict[str, Any], metrics_reported: tuple[str, ...], selections: dict[str, RateSelection],
                  cost: dict[str, Any]) -> pd.DataFrame:
    """The report's first table: per method its scores with 95 % intervals, chosen rate, trainable
    parameters, cost end to end, and NeFT against it in a word per metric."""
    rows = []
    for method in ("neft", "lora", "full", "base"):
        entry, spent = document[method], cost.get(method, {})
        row = {"method": method}
        row.update({metric: f"{entry[metric]:.2f} ± {entry[f'{metric}_ci95']:.2f}" for metric in metrics_reported})
        selection = selections.get(method)
        row["learning rate"] = f"{selection.chosen.learning_rate:g} ({selection.status})" if selection else "-"
        row["trainable"] = f"{entry['trainable_percent']:.2f} %"
        row["time end to end"] = f"{spent['end_to_end_seconds']:.0f} s" if spent else "-"
        row["peak memory"] = f"{spent['end_to_end_peak_memory_mb']:,.0f} MB" if spent else "-"
        comparison = document["significance"].get(f"neft_vs_{method}")
        row["NeFT - this"] = "-" if comparison is None else "; ".join(
            f"{metric} {comparison[f'{metric}_difference']:+.2f} (p {comparison[f'{metric}_p']:.3f}, "
            f"{verdict(comparison[f'{metric}_difference'], comparison[f'{metric}_p'])})" for metric in metrics_reported)
        rows.append(row)
    return pd.DataFrame(rows)


def rate_search_table(selections: dict[str, RateSelection]) -> pd.DataFrame:
    """Every candidate's validation loss; the chosen one marked."""
    return pd.DataFrame([
        {"method": method, "learning rate": f"{candidate.learning_rate:g}", "valid loss": round(candidate.valid_loss, 4),
         "chosen": "yes" if candidate == selection.chosen else "", "choice": selection.status if candidate == selection.chosen else ""}
        for method, selection in selections.items() for candidate in selection.candidates
    ])


def _plain(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, float) else value


def _made_with(name: str, value: Any) -> float | int:
    """Unrounded: a learning rate such as 5e-05 must survive to be compared with the params."""
    return float(value) if name == "learning_rate" else int(value)


def markdown_report(table: pd.DataFrame, config: Config, signatures: dict[str, str], mask_summary: dict[str, Any],
                    significance: pd.DataFrame, verdict: pd.DataFrame, rate_search: pd.DataFrame, hardware: str) -> str:
    segments, samples = int(significance["segments"].iloc[0]), int(significance["samples"].iloc[0])
    lines = [
        f"# Is NeFT worth it? {config.model.name} on {config.task.name}",
        "",
        f"Each method at the learning rate its own validation loss chose from its grid; {segments} test segments; "
        f"NeFT trains {mask_summary['trainable_percent']:.2f} % of the parameters, LoRA as many.",
        "",
        verdict.to_markdown(index=False),
        "",
        f"- **Single seed** (seed {config.seed}): each p-value is a paired bootstrap over the test segments "
        f"({samples} resamples), so it counts the test set's variance, not the variance between training runs. "
        "For a claim over seeds, run more (`dvc exp run --queue -S seed=1,2`) and use the seed-aware test (docs/statistics.md).",
        f"- A word is \"better\" or \"worse\" at p < {ALPHA}, else \"within noise\". Scores are given with the "
        "half-width of their bootstrap 95 % interval.",
        "- Time and memory: the chosen run's training, plus the probe's for NeFT (scoring and masking take seconds); the "
        "peak is the training window's (RSS on CPU). The rate search cost more: reports/cost.json (`search_seconds`).",
        f"- Computed on {hardware}. The same seed gives the same bytes on the same kind of CPU; other kernels (another CPU, "
        "a GPU) round differently, which can move a difference by a few tenths of a point (docs/reproducibility.md).",
        "",
        "## Learning rates",
        "",
        "Every candidate's validation loss (its best checkpoint); the lowest chose. A choice at the edge of its grid is "
        "not bracketed: widen the grid (`methods.<method>.learning_rates`).",
        "",
        rate_search.to_markdown(index=False),
        "",
        "## Details",
        "",
        f"ratio = {config.ratio} -> {mask_summary['num_neurons']} neurons, "
        f"{mask_summary['trainable_parameters']:,} trainable parameters "
        f"({mask_summary['trainable_percent']:.2f} % of {mask_summary['total_parameters']:,}); "
        f"{config.train.steps} steps of batch {config.train.batch_size}; "
        f"probe: {config.probe.kind}, {config.probe.steps} steps at lr {config.probe.learning_rate}.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        "LoRA's rank is chosen so its trainable count matches NeFT's. Peak memory is the training window's (neft.measure: "
        "RSS high-water mark after set-up on CPU, max allocated on GPU), as in the benchmark.",
        "",
        *[f"- {name}: `{signature}`" for name, signature in signatures.items()],
        "",
        f"Paired bootstrap, NeFT against each baseline on the same {segments} test segments "
        f"({samples} resamples; two-sided p; ci95: half-width of each system's 95 % interval):",
        "",
        significance[["comparison", "metric", "baseline", "system", "difference", "p_value", "baseline_ci95", "system_ci95"]]
        .to_markdown(index=False, floatfmt=".4g"),
        "",
        "![validation loss of every candidate rate](plots/valid_loss.png)",
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


def plot_validation_losses(selections: dict[str, RateSelection], log_dir: Callable[[str], Path], out: Path) -> None:
    """Every candidate's validation loss over its steps, one panel per method, the chosen rate bold."""
    figure, axes = plt.subplots(1, len(selections), figsize=(4 * len(selections), 3.5), sharey=True, squeeze=False)
    for axis, (method, selection) in zip(axes[0], selections.items(), strict=True):
        for candidate in selection.candidates:
            tsv = log_dir(candidate.run) / "plots" / "metrics" / "valid_loss.tsv"
            if tsv.is_file():
                frame = pd.read_csv(tsv, sep="\t")
                chosen = candidate == selection.chosen
                axis.plot(frame["step"], frame["valid_loss"], linewidth=2.5 if chosen else 1,
                          label=f"{candidate.learning_rate:g}{' (chosen)' if chosen else ''}")
        axis.set_title(f"{method}: {selection.status}")
        axis.set_xlabel("step")
        axis.legend(title="learning rate")
    axes[0][0].set_ylabel("validation loss")
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
