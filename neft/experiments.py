"""Turning many DVC experiments into answers: the budget curve (quality vs trainable % for NeFT and
matched LoRA, the paper's Table 7), the controls at one budget (cosine vs reversed vs random), the
spread over seeds (mean +/- standard deviation per method, and of the paired differences NeFT -
LoRA and NeFT - full FT within each run, with a paired t-test over the seeds), and the learning curve (quality vs training steps, each
method at the learning rate its validation loss chose for that step budget).

Input is `dvc exp show --json`; every function below works on plain data and is tested on it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from neft.methods import EVAL_METHODS
from neft.significance import seed_t_test

GROUP_KEYS = ("task", "model", "score_form", "ratio", "strategy", "steps")
# Runs from before `score.form` existed scored with the paper's fp32 cosine.
SCORE_FORM_BEFORE_THE_OPTION = "fp32"


def _finished(experiment: dict[str, Any]) -> bool:
    """Queued, running and failed experiments show placeholder params/metrics: leave them out."""
    executor = experiment.get("executor") or {}
    return executor.get("state", "success") == "success"


def _revisions(entries: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, data) of every baseline commit and every finished experiment under it, newest commit first."""
    for entry in entries:
        if entry.get("data"):
            yield entry.get("name") or entry["rev"], entry["data"]
        for experiment in entry.get("experiments") or []:
            if not _finished(experiment):
                continue
            for revision in experiment.get("revs", []):
                if revision.get("data"):
                    yield revision.get("name") or revision["rev"], revision["data"]


def _file_data(section: dict[str, Any] | None, suffix: str) -> dict[str, Any]:
    for path, content in (section or {}).items():
        if path.endswith(suffix):
            return content.get("data") or {}
    return {}


CONFIG_KEYS = (*GROUP_KEYS, "seed", "method", "learning_rate")


def made_for_other_params(params: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """Where a run's metrics.json says it was made with other settings than the run's params.

    An experiment that stopped before the report stage (`dvc exp run ... evaluate@neft`) keeps the
    metrics.json of the workspace it started from: another learning rate, seed or mask. Reports from
    before these fields were recorded cannot be checked and pass.
    """
    expected = {("mask", "ratio"): params["ratio"], ("mask", "strategy"): params["mask"]["strategy"]}
    for method, settings in params["methods"].items():
        expected |= {(method, "learning_rate"): learning_rate_grid(settings), (method, "steps"): params["train"]["steps"],
                     (method, "seed"): params["seed"]}
    found = []
    for (section, key), wanted in expected.items():
        recorded = (metrics.get(section) or {}).get(key)
        if recorded is None:
            continue
        if isinstance(wanted, tuple):  # the chosen rate must be one of the grid's
            same = any(math.isclose(recorded, rate, rel_tol=1e-9) for rate in wanted)
            wanted = wanted[0] if len(wanted) == 1 else list(wanted)
        else:
            same = math.isclose(recorded, wanted, rel_tol=1e-9) if isinstance(wanted, float) else recorded == wanted
        if not same:
            found.append(f"{section}.{key} = {recorded!r}, params say {wanted!r}")
    return found


def learning_rate_grid(settings: dict[str, Any]) -> tuple[float, ...]:
    """A method's rates in an experiment's params: its grid, or the one rate of runs made before grids."""
    return tuple(settings["learning_rates"]) if "learning_rates" in settings else (settings["learning_rate"],)


def experiment_rows(exp_show: list[dict[str, Any]], include_workspace: bool = False) -> pd.DataFrame:
    """One row per (experiment, method): its parameters that matter and its metrics.

    A configuration run more than once (the same params in several commits, as `dvc exp show -A`
    lists every commit) counts once, from the first listed: the newest commit's run.
    """
    rows = []
    for name, data in _revisions(exp_show):
        if name == "workspace" and not include_workspace:
            continue
        params = _file_data(data.get("params"), "params.yaml")
        metrics = _file_data(data.get("metrics"), "metrics.json")
        if not params or not metrics:
            continue
        if mismatches := made_for_other_params(params, metrics):
            warnings.warn(f"left out {name}: its reports/metrics.json was made for other settings ({'; '.join(mismatches)}); "
                          "the run stopped before its report stage, so rerun it through `report`", stacklevel=2)
            continue
        for method in EVAL_METHODS:
            if method not in metrics:
                continue
            # NeFT's row carries the run's paired bootstrap against each baseline: neft_vs_lora.bleu_p, ...
            tests = {f"{comparison}.{key}": value for comparison, values in (metrics.get("significance") or {}).items()
                     for key, value in values.items()} if method == "neft" else {}
            rows.append({
                "experiment": name,
                "task": params["task"]["name"],
                "kind": params["task"]["kind"],
                "model": params["model"]["name"],
                "score_form": (params.get("score") or {}).get("form", SCORE_FORM_BEFORE_THE_OPTION),
                "ratio": params["ratio"],
                "strategy": params["mask"]["strategy"],
                "steps": params["train"]["steps"],
                "seed": params["seed"],
                "method": method,
                # The rate the run was made at: the one validation loss chose from the grid (recorded in metrics.json).
                "learning_rate": (metrics[method].get("learning_rate", learning_rate_grid(params["methods"][method])[0])
                                  if method in params["methods"] else None),
                **metrics[method],
                **tests,
            })
    frame = pd.DataFrame(rows)
    return frame.drop_duplicates(list(CONFIG_KEYS), keep="first").reset_index(drop=True) if rows else frame


def select_learning_rates(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per configuration and step budget, keep each trained method at the learning rate whose
    validation loss (the kept checkpoint's, mean over seeds) is lowest; test scores play no part.

    Returns the rows at the chosen rates (the base model's rows, which train nothing, once per run
    configuration and seed) and the candidates: every (configuration, method, learning rate) with
    its mean validation loss, its seeds and whether it was chosen. A configuration run at a single
    rate keeps it, validation loss or not; several rates without validation losses cannot be chosen
    between, and raise.
    """
    base = rows[rows["method"] == "base"].drop_duplicates([*GROUP_KEYS, "seed"])
    trained = rows[rows["method"] != "base"]
    if "valid_loss" not in trained:
        trained = trained.assign(valid_loss=float("nan"))
    candidates = trained.groupby([*GROUP_KEYS, "method", "learning_rate"], sort=True, dropna=False).agg(
        valid_loss=("valid_loss", "mean"), seeds=("seed", "nunique")).reset_index()
    chosen = []
    for key, options in candidates.groupby([*GROUP_KEYS, "method"], sort=False, dropna=False):
        if len(options) == 1:
            chosen.append(options.index[0])
        elif options["valid_loss"].isna().any():
            raise ValueError(f"{dict(zip([*GROUP_KEYS, 'method'], key, strict=True))} ran at learning rates "
                             f"{sorted(options['learning_rate'])}, not all with a validation loss in metrics.json: "
                             "rerun them with this code's report stage, or collect them apart")
        else:
            chosen.append(options["valid_loss"].idxmin())
    candidates["chosen"] = candidates.index.isin(chosen)
    keep = candidates.loc[candidates["chosen"], [*GROUP_KEYS, "method", "learning_rate"]]
    selected = trained.merge(keep, on=[*GROUP_KEYS, "method", "learning_rate"])
    return pd.concat([base, selected], ignore_index=True), candidates


def seed_summary(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, standard deviation and count of `metric` over seeds, per (task, ratio, strategy, method)."""
    grouped = rows.groupby([*GROUP_KEYS, "method"], sort=True)
    summary = grouped.agg(
        trainable_percent=("trainable_percent", "mean"),
        mean=(metric, "mean"),
        std=(metric, "std"),
        seeds=("seed", "nunique"),
    ).reset_index()
    summary["std"] = summary["std"].fillna(0.0)  # one seed: no spread measured
    return summary


def paired_differences(
    rows: pd.DataFrame, metric: str, method: str = "neft", references: tuple[str, ...] = ("lora", "full")
) -> pd.DataFrame:
    """`method` minus each reference within the same run, then mean +/- std over seeds, and
    `seed_t_test` over them: p_seeds and the 95 % t interval of the mean (NaN for one seed).

    A seed also redraws the data sample (test set included), so per-method spreads mix data and
    training noise; the difference within a run cancels what the methods share. The collector
    holds each run's scores, not its predictions, so this is the seed-aware test's training-variance
    part only; where each seed draws its own test sample the per-seed differences vary with it too.
    For the full test, compare the runs' predictions (scripts/compare_predictions.py).
    """
    keys = [*GROUP_KEYS, "seed"]
    wide = rows.pivot_table(index=keys, columns="method", values=metric, aggfunc="first")
    frames = []
    for reference in references:
        if method not in wide or reference not in wide:
            continue
        difference = (wide[method] - wide[reference]).dropna().rename("difference").reset_index()
        difference["comparison"] = f"{method} - {reference}"
        frames.append(difference)
    if not frames:
        return pd.DataFrame(columns=[*GROUP_KEYS, "comparison", "mean", "std", "seeds", "wins", "ci95_low", "ci95_high", "p_seeds"])
    grouped = pd.concat(frames).groupby([*GROUP_KEYS, "comparison"], sort=True)
    summary = grouped.agg(
        mean=("difference", "mean"), std=("difference", "std"), seeds=("seed", "nunique"),
        wins=("difference", lambda values: int((values > 0).sum())),
    ).reset_index()
    summary["std"] = summary["std"].fillna(0.0)
    tests = [seed_t_test(values.to_numpy()) for _, values in grouped["difference"]]  # in the summary's (sorted) order
    summary[["p_seeds", "ci95_low", "ci95_high"]] = pd.DataFrame(tests, dtype=float).to_numpy()
    return summary[[*GROUP_KEYS, "comparison", "mean", "std", "seeds", "wins", "ci95_low", "ci95_high", "p_seeds"]]


def run_significance(rows: pd.DataFrame, metric: str, references: tuple[str, ...] = ("lora", "full")) -> pd.DataFrame:
    """Per run: NeFT's score with its 95 % interval, and its paired-bootstrap difference and p-value
    against each reference, as the run's report computed them on its test set."""
    neft = rows[rows["method"] == "neft"].sort_values([*GROUP_KEYS, "seed"])
    names = {column: column for column in (*GROUP_KEYS, "seed", metric, f"{metric}_ci95")}
    for reference in references:
        names[f"neft_vs_{reference}.{metric}_difference"] = f"neft - {reference}"
        names[f"neft_vs_{reference}.{metric}_p"] = f"p (neft - {reference})"
    present = [column for column in names if column in neft]
    return neft[present].rename(columns=names).reset_index(drop=True)


def budget_curve(rows: pd.DataFrame, metric: str, strategy: str = "cosine") -> pd.DataFrame:
    """NeFT and matched LoRA quality per budget (cosine masks only), averaged over seeds."""
    summary = seed_summary(rows[rows["strategy"] == strategy], metric)
    curve = summary[summary["method"].isin(["neft", "lora"])]
    return curve.sort_values(["task", "score_form", "steps", "method", "ratio"]).reset_index(drop=True)


def controls_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """NeFT under each mask strategy at each budget: rows (task, ratio), columns strategy."""
    neft = seed_summary(rows[rows["method"] == "neft"], metric)
    neft["value"] = neft.apply(lambda row: f"{row['mean']:.2f} +/- {row['std']:.2f} (n={row['seeds']})", axis=1)
    table = neft.pivot_table(index=["task", "score_form", "steps", "ratio"], columns="strategy", values="value", aggfunc="first")
    return table.fillna("-").reset_index()  # "-": that strategy was not run at that budget


def learning_curve(selected: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every method's quality per step budget (rows from `select_learning_rates`), mean over seeds,
    with the chosen learning rate."""
    summary = seed_summary(selected, metric)
    rates = selected.groupby([*GROUP_KEYS, "method"], dropna=False)["learning_rate"].first().reset_index()
    curve = summary.merge(rates, on=[*GROUP_KEYS, "method"], how="left")
    return curve.sort_values(["task", "model", "ratio", "strategy", "method", "steps"]).reset_index(drop=True)


def plot_learning_curve(curve: pd.DataFrame, metric: str, out_path: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for (task, model, ratio, strategy, method), part in curve.groupby(["task", "model", "ratio", "strategy", "method"]):
        label = method if method in ("base", "full") else f"{method} {100 * ratio:g} %"
        if strategy != "cosine":
            label += f" ({strategy} mask)"
        axis.errorbar(part["steps"], part["mean"], yerr=part["std"], marker="o", capsize=3, label=f"{label}, {model} on {task}")
    axis.set_xlabel("training steps (each method at its learning rate chosen on validation loss)")
    axis.set_ylabel(metric)
    axis.set_title("Quality vs training steps")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)


def plot_budget_curve(curve: pd.DataFrame, metric: str, out_path: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for (task, score_form, steps, method), part in curve.groupby(["task", "score_form", "steps", "method"]):
        scores = "" if method == "lora" else f", {score_form} scores"  # LoRA reads no scores
        label = f"{method} ({task}{scores}, {steps} steps)"
        axis.errorbar(part["trainable_percent"], part["mean"], yerr=part["std"], marker="o", capsize=3, label=label)
    axis.set_xlabel("trainable parameters (% of model)")
    axis.set_ylabel(metric)
    axis.set_title("Quality vs budget: NeFT and LoRA at matched parameter counts")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
