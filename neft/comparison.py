"""Two runs that differ in one choice (score precision, probe, mask strategy), compared pairwise:
how far their masks overlap, how well their scores resolve the cutoff, where in the model their
neurons sit, and whether NeFT's quality differs beyond noise (paired bootstrap per pair, and over
all pairs the seed-aware test of neft/significance.py, which counts the variance between training
runs as well as between test segments).

A pair shares its seed, so its two NeFT runs see the same training and test data; only the
compared choice differs. Several pairs are several seeds. `scripts/compare_runs.py` loads the runs from DVC experiments;
`scripts/compare_predictions.py` compares saved prediction files alone (the quality part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neft.analysis import jaccard
from neft.config import MetricOptions
from neft.masks import NeuronMask
from neft.significance import compare_predictions, seed_aware_test

SEED_AWARE = "seed-aware"  # how quality_table names the rows over all pairs
SINGLE_SEED_NOTE = "single seed: test-segment variance only"


class Predictions(Protocol):
    """A named system's test predictions: id, reference, prediction (None if it has none)."""

    name: str
    predictions: pd.DataFrame | None


@dataclass
class SavedPredictions:
    """Predictions read from a file, without the run that made them."""

    name: str
    predictions: pd.DataFrame


@dataclass
class RunOutputs:
    """What one run left that a comparison reads."""

    name: str
    mask: NeuronMask
    mask_summary: dict[str, Any]
    score_summary: dict[str, Any]
    predictions: pd.DataFrame | None = None  # test predictions (NeFT's, or LoRA's for a LoRA baseline): id, reference, prediction
    costs: dict[str, Any] = field(default_factory=dict)  # what its probe cost: kind, steps, seconds, peak memory


def probe_costs(params: dict[str, Any], probe: dict[str, Any], lora: dict[str, Any], budget: int) -> dict[str, Any]:
    """What a run's probe cost, and its peak against the run's matched LoRA (`probe`, `lora`: their
    training summaries, {} if absent; `budget`: the run's NeFT trainable-parameter count). The LoRA
    counts only if it was trained for this run's budget, seed and steps: an experiment that did not
    train LoRA still holds the summary its baseline commit had, made for another mask or model."""
    matched = (lora.get("neft_budget"), lora.get("seed"), lora.get("steps")) == (budget, params["seed"], params["train"]["steps"])
    lora_peak = lora["peak_memory_mb"] if matched else None
    return {"probe_kind": params["probe"].get("kind", "full"), "probe_steps": params["probe"]["steps"],
            "probe_seconds": probe.get("train_seconds"), "probe_peak_mb": probe.get("peak_memory_mb"),
            "lora_train_peak_mb": lora_peak,
            "probe_peak_vs_lora": round(probe["peak_memory_mb"] / lora_peak, 3) if probe and lora_peak else None}


def mask_table(pairs: Sequence[tuple[RunOutputs, RunOutputs]]) -> pd.DataFrame:
    """Per pair: mask overlap, and for each side its resolution (distinct changes, ties at the cutoff)."""
    rows = []
    for baseline, system in pairs:
        row: dict[str, Any] = {"baseline": baseline.name, "system": system.name, "jaccard": jaccard(baseline.mask, system.mask)}
        for side, run in (("baseline", baseline), ("system", system)):
            row[f"{side}_distinct_changes"] = run.score_summary.get("distinct_changes")
            row[f"{side}_tied_at_cutoff"] = run.mask_summary.get("tied_at_cutoff")
            row[f"{side}_decided_by_tiebreak"] = run.mask_summary.get("decided_by_tiebreak")
            for kind, count in sorted(run.mask_summary.get("neurons_per_kind", {}).items()):
                row[f"{side}_{kind}_neurons"] = count
        rows.append(row)
    return pd.DataFrame(rows)


def quality_table(kind: str, pairs: Sequence[tuple[Predictions, Predictions]], options: MetricOptions = MetricOptions()) -> pd.DataFrame:
    """Paired bootstrap of each pair's predictions, then, with several pairs (seeds), the seed-aware
    test over all of them (`neft.significance.seed_aware_test`: its p_value needs both the per-seed
    t-test and the clustered segment bootstrap to reject)."""
    rows = []
    for baseline, system in pairs:
        if system.predictions is None or baseline.predictions is None:
            raise ValueError(f"{baseline.name} or {system.name} has no predictions")
        for comparison in compare_predictions(kind, baseline.predictions, system.predictions, options):
            rows.append({"pair": f"{system.name} - {baseline.name}", **comparison.as_dict()})
    if len(pairs) > 1:
        seeds = [(baseline.predictions, system.predictions) for baseline, system in pairs]
        for comparison in seed_aware_test(kind, seeds, options):
            rows.append({"pair": f"{SEED_AWARE} ({len(pairs)} seeds)", **comparison.as_dict()})
    return pd.DataFrame(rows)


def difference_summary(quality: pd.DataFrame) -> pd.DataFrame:
    """Mean +/- std over pairs of each metric's difference, and in how many pairs the system is higher."""
    per_pair = quality[~quality["pair"].str.startswith(SEED_AWARE)]
    return per_pair.groupby("metric", sort=False).agg(
        mean_difference=("difference", "mean"), std_difference=("difference", "std"), pairs=("difference", "size"),
        system_higher=("difference", lambda values: int((values > 0).sum())),
        significant_at_005=("p_value", lambda values: int((values < 0.05).sum())),
    ).reset_index()


def write_quality_report(kind: str, pairs: Sequence[tuple[Predictions, Predictions]], options: MetricOptions, out_dir: Path) -> list[str]:
    """`quality_table` and `difference_summary` of the pairs, written to quality.csv and
    differences.csv in `out_dir`; returns them as markdown lines."""
    quality = quality_table(kind, pairs, options)
    differences = difference_summary(quality)
    quality.to_csv(out_dir / "quality.csv", index=False)
    differences.to_csv(out_dir / "differences.csv", index=False)
    if len(pairs) == 1:
        scope = [f"One pair, so {SINGLE_SEED_NOTE}: p does not count the variance between training runs.", ""]
    else:
        scope = [f"The {SEED_AWARE} rows test the mean over seeds of each seed's difference: p_seeds is a paired t-test "
                 "over the per-seed differences (training variance; ci95_low/high its 95 % interval), p_segments a paired "
                 "bootstrap of test segments clustered over seeds, and p_value the larger (a difference counts only if "
                 "both reject; docs/statistics.md).", ""]
    return [quality.to_markdown(index=False, floatfmt=".4g"), "", *scope,
            "Over pairs:", "", differences.to_markdown(index=False, floatfmt=".3g"), ""]


def layer_distribution(masks: dict[str, NeuronMask]) -> pd.DataFrame:
    """Selected neurons per layer (all kinds together) for each named mask; one column per mask."""
    return pd.DataFrame({
        name: [sum(len(mask.layer_indices(kind, layer)) for kind in mask.indices) for layer in range(mask.shape.num_layers)]
        for name, mask in masks.items()
    }).rename_axis("layer")


def plot_layer_distribution(distribution: pd.DataFrame, out_path: str) -> None:
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(distribution.columns), 1)
    for position, name in enumerate(distribution.columns):
        axis.bar(np.arange(len(distribution)) + position * width, distribution[name], width=width, label=name)
    axis.set_xlabel("layer")
    axis.set_ylabel("selected neurons")
    axis.set_title("Where the mask's neurons sit")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
