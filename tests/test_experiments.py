"""Aggregation of `dvc exp show --json` into budget curve, controls and seed spread."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from neft.experiments import (
    budget_curve,
    controls_table,
    experiment_rows,
    learning_curve,
    paired_differences,
    run_significance,
    seed_summary,
    select_learning_rates,
)

ROOT = Path(__file__).resolve().parents[1]


def revision(name, ratio, seed, strategy, neft_bleu, lora_bleu, steps=60, learning_rate=5e-4, valid_loss=None):
    params = {
        "ratio": ratio, "seed": seed, "mask": {"strategy": strategy},
        "task": {"name": "bible", "kind": "translation"}, "model": {"name": "m"}, "train": {"steps": steps},
        "methods": {"full": {"learning_rate": learning_rate / 10}, "neft": {"learning_rate": learning_rate},
                    "lora": {"learning_rate": learning_rate}},
    }
    metrics = {
        "base": {"trainable_percent": 0.0, "bleu": 1.0},
        "neft": {"trainable_percent": 100 * ratio, "bleu": neft_bleu, "bleu_ci95": 1.5},
        "lora": {"trainable_percent": 100 * ratio + 0.1, "bleu": lora_bleu},
        "significance": {"neft_vs_lora": {"bleu_difference": neft_bleu - lora_bleu, "bleu_p": 0.01 * seed + 0.02}},
    }
    for method, loss in (valid_loss or {}).items():
        metrics[method]["valid_loss"] = loss
    data = {"params": {"params.yaml": {"data": params}}, "metrics": {"reports/metrics.json": {"data": metrics}}}
    return {"rev": name, "name": name, "data": data}


def exp_show():
    """Shaped like DVC 3's `dvc exp show --json`: baselines, experiments under them."""
    baseline = revision("main", 0.06, 0, "cosine", 10.0, 8.0)
    baseline["experiments"] = [
        {"revs": [revision("exp-a", 0.06, 1, "cosine", 12.0, 9.0)]},
        {"revs": [revision("exp-b", 0.03, 0, "cosine", 7.0, 6.0)]},
        {"revs": [revision("exp-c", 0.06, 0, "random", 5.0, 8.0)]},
        {"revs": [revision("exp-d", 0.06, 0, "reversed", 4.0, 8.0)]},
    ]
    queued = revision("exp-queued", 0.12, 0, "cosine", 99.0, 99.0)  # placeholder metrics until it runs
    baseline["experiments"].append({"executor": {"state": "queued"}, "revs": [queued]})
    failed = revision("exp-failed", 0.01, 0, "cosine", 99.0, 99.0)
    baseline["experiments"].append({"executor": {"state": "failed"}, "revs": [failed]})
    baseline["experiments"][0]["executor"] = {"state": "success"}
    older = revision("older-commit", 0.06, 0, "cosine", 3.0, 3.0)  # same config under older code
    workspace = revision("workspace", 0.06, 0, "cosine", 10.0, 8.0)
    return [workspace, baseline, older]


def test_rows_cover_every_finished_experiment_and_method_but_not_the_workspace():
    rows = experiment_rows(exp_show())
    # Queued/failed experiments and the older commit's run of main's configuration are left out.
    assert set(rows["experiment"]) == {"main", "exp-a", "exp-b", "exp-c", "exp-d"}
    assert len(rows) == 5 * 3
    assert rows[rows["experiment"] == "main"].set_index("method")["bleu"].to_dict() == {"base": 1.0, "neft": 10.0, "lora": 8.0}
    with_workspace = experiment_rows(exp_show(), include_workspace=True)
    assert set(with_workspace["experiment"]) == {"workspace", "exp-a", "exp-b", "exp-c", "exp-d"}  # it is listed first


def test_an_experiment_whose_metrics_were_made_for_other_settings_is_left_out():
    """`dvc exp run -S methods.neft.learning_rate=1e-3 evaluate@neft` stops before the report, so its
    metrics.json is the one it started from: its rows would put 5e-4's scores under 1e-3."""
    def recorded(name, learning_rate, made_with_learning_rate, seed=0, made_with_seed=0, strategy="cosine"):
        entry = revision(name, 0.06, seed, strategy, 10.0, 8.0, learning_rate=learning_rate)
        metrics = entry["data"]["metrics"]["reports/metrics.json"]["data"]
        for method in ("neft", "lora"):
            metrics[method] |= {"learning_rate": made_with_learning_rate, "steps": 60, "seed": made_with_seed}
        metrics["mask"] = {"ratio": 0.06, "strategy": "cosine"}
        return entry

    baseline = recorded("main", 5e-4, 5e-4)
    baseline["experiments"] = [{"revs": [recorded("own-report", 2e-3, 2e-3)]},
                               {"revs": [recorded("stopped-early", 1e-3, 5e-4)]},
                               {"revs": [recorded("other-seed", 5e-4, 5e-4, seed=1, made_with_seed=0)]},
                               {"revs": [recorded("other-mask", 5e-4, 5e-4, strategy="random")]}]
    with pytest.warns(UserWarning) as caught:
        rows = experiment_rows([baseline])
    assert set(rows["experiment"]) == {"main", "own-report"}
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 3
    assert "left out other-mask" in messages[0] and "mask.strategy = 'cosine', params say 'random'" in messages[0]
    assert "left out other-seed" in messages[1] and "neft.seed = 0, params say 1" in messages[1]
    assert "left out stopped-early" in messages[2] and "neft.learning_rate = 0.0005, params say 0.001" in messages[2]
    assert "through `report`" in messages[2]


def test_seed_summary_gives_mean_and_sample_std():
    summary = seed_summary(experiment_rows(exp_show()), "bleu")
    neft = summary[(summary["method"] == "neft") & (summary["ratio"] == 0.06) & (summary["strategy"] == "cosine")].iloc[0]
    assert neft["mean"] == pytest.approx(11.0)
    assert neft["std"] == pytest.approx(2 ** 0.5)  # sample std of 10 and 12
    assert neft["seeds"] == 2
    single = summary[(summary["method"] == "neft") & (summary["ratio"] == 0.03)].iloc[0]
    assert single["std"] == 0.0 and single["seeds"] == 1


def test_paired_differences_subtract_within_each_run_then_average_over_seeds():
    differences = paired_differences(experiment_rows(exp_show()), "bleu")
    at_default = differences[(differences["ratio"] == 0.06) & (differences["strategy"] == "cosine")].set_index("comparison")
    # main: neft 10 - lora 8 = 2; exp-a: 12 - 9 = 3. No full FT in these runs: no "neft - full" row.
    assert list(at_default.index) == ["neft - lora"]
    assert at_default.loc["neft - lora", "mean"] == pytest.approx(2.5)
    assert at_default.loc["neft - lora", "std"] == pytest.approx(0.5 ** 0.5)
    assert at_default.loc["neft - lora", "seeds"] == 2 and at_default.loc["neft - lora", "wins"] == 2
    # paired t-test over the two seeds' differences 2 and 3: t = 2.5 / 0.5 = 5 on 1 degree of freedom
    assert at_default.loc["neft - lora", "p_seeds"] == pytest.approx(0.1257, abs=1e-4)
    assert at_default.loc["neft - lora", "ci95_low"] < 0 < at_default.loc["neft - lora", "ci95_high"]
    random_control = differences[differences["strategy"] == "random"].iloc[0]
    assert random_control["mean"] == pytest.approx(-3.0) and random_control["wins"] == 0
    assert random_control["seeds"] == 1 and pd.isna(random_control["p_seeds"])  # one seed: no t-test


def test_each_runs_significance_is_collected_with_neft_and_its_interval():
    tests = run_significance(experiment_rows(exp_show()), "bleu")
    cosine = tests[(tests["strategy"] == "cosine") & (tests["ratio"] == 0.06)]
    assert list(cosine["seed"]) == [0, 1]
    assert list(cosine["bleu"]) == [10.0, 12.0] and set(cosine["bleu_ci95"]) == {1.5}
    assert list(cosine["neft - lora"]) == [2.0, 3.0] and list(cosine["p (neft - lora)"]) == [0.02, 0.03]


def test_budget_curve_has_neft_and_lora_per_ratio_from_cosine_masks_only():
    curve = budget_curve(experiment_rows(exp_show()), "bleu")
    assert set(curve["method"]) == {"neft", "lora"}
    assert curve[curve["method"] == "neft"]["ratio"].tolist() == [0.03, 0.06]
    assert curve[curve["method"] == "neft"]["mean"].tolist() == [7.0, 11.0]  # random/reversed left out


def test_controls_put_strategies_side_by_side():
    table = controls_table(experiment_rows(exp_show()), "bleu")
    row = table[table["ratio"] == 0.06].iloc[0]
    assert row["cosine"].startswith("11.00 +/- 1.41 (n=2)")
    assert row["random"].startswith("5.00") and row["reversed"].startswith("4.00")


def learning_rate_sweep():
    """Two step budgets; at 120 steps, three learning rates whose validation losses disagree with
    their test scores (the rate with the best BLEU has the worst validation loss)."""
    baseline = revision("main", 0.06, 0, "cosine", 10.0, 8.0, valid_loss={"neft": 2.0, "lora": 2.1})
    runs = [
        ("lr-low", 1e-4, 11.0, 9.0, {"neft": 1.9, "lora": 2.2}),
        ("lr-mid", 5e-4, 13.0, 12.0, {"neft": 1.7, "lora": 2.3}),
        ("lr-high", 1e-3, 15.0, 10.0, {"neft": 2.5, "lora": 1.8}),
    ]
    baseline["experiments"] = [{"revs": [revision(name, 0.06, 0, "cosine", neft, lora, steps=120, learning_rate=rate, valid_loss=losses)]}
                               for name, rate, neft, lora, losses in runs]
    return [baseline]


def test_learning_rates_are_chosen_per_budget_and_method_on_validation_loss_not_test_score():
    selected, candidates = select_learning_rates(experiment_rows(learning_rate_sweep()))
    at_120 = selected[selected["steps"] == 120].set_index("method")
    assert at_120.loc["neft", "learning_rate"] == 5e-4 and at_120.loc["neft", "bleu"] == 13.0  # not 1e-3's 15.0
    assert at_120.loc["lora", "learning_rate"] == 1e-3 and at_120.loc["lora", "bleu"] == 10.0  # not 5e-4's 12.0
    assert at_120.loc["base", "bleu"] == 1.0 and (selected["method"] == "base").sum() == 2  # once per budget
    assert selected[selected["steps"] == 60].set_index("method").loc["neft", "bleu"] == 10.0  # one rate: kept
    neft_at_120 = candidates[(candidates["steps"] == 120) & (candidates["method"] == "neft")]
    assert list(neft_at_120["learning_rate"]) == [1e-4, 5e-4, 1e-3] and list(neft_at_120["chosen"]) == [False, True, False]


def test_the_learning_curve_gives_each_method_per_step_budget_at_its_chosen_rate():
    selected, _ = select_learning_rates(experiment_rows(learning_rate_sweep()))
    curve = learning_curve(selected, "bleu").set_index(["method", "steps"])
    assert curve.loc[("neft", 60), "mean"] == 10.0 and curve.loc[("neft", 120), "mean"] == 13.0
    assert curve.loc[("lora", 120), "learning_rate"] == 1e-3 and curve.loc[("neft", 120), "learning_rate"] == 5e-4
    assert curve.loc[("base", 120), "mean"] == 1.0


def test_several_learning_rates_without_validation_losses_cannot_be_chosen_between():
    runs = learning_rate_sweep()
    del runs[0]["experiments"][1]["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["neft"]["valid_loss"]
    with pytest.raises(ValueError, match=r"'method': 'neft'.*learning rates \[0.0001, 0.0005, 0.001\]"):
        select_learning_rates(experiment_rows(runs))


def test_collect_script_writes_summary_and_plot(tmp_path):
    (tmp_path / "exp.json").write_text(json.dumps(exp_show()))
    command = [sys.executable, str(ROOT / "scripts/collect_experiments.py"), "--input", str(tmp_path / "exp.json"),
               "--out", str(tmp_path / "out")]
    subprocess.run(command, check=True, capture_output=True)
    assert "Budget curve" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "budget_curve_translation_bleu.png").stat().st_size > 1000
    assert (tmp_path / "out" / "learning_curve_translation_bleu.png").stat().st_size > 1000
    assert (tmp_path / "out" / "learning_rates_translation.csv").is_file()


def test_collect_script_keeps_the_experiments_asked_for(tmp_path):
    (tmp_path / "exp.json").write_text(json.dumps(exp_show()))
    command = [sys.executable, str(ROOT / "scripts/collect_experiments.py"), "--input", str(tmp_path / "exp.json"),
               "--out", str(tmp_path / "out"), "--experiments", "exp-[cd]", "main"]
    subprocess.run(command, check=True, capture_output=True)
    assert "3 experiments" in (tmp_path / "out" / "summary.md").read_text()
    command[-2:] = ["nothing-*"]
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode == 1 and "no experiment matches --experiments nothing-*" in failed.stderr
