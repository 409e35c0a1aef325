"""Pairwise run comparison: overlap, layer counts and paired quality on the same segments."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from neft.comparison import RunOutputs, difference_summary, layer_distribution, mask_table, probe_costs, quality_table
from neft.masks import ModelShape, NeuronMask

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ModelShape(num_layers=3, d_model=4, d_ff=8, total_parameters=1000)
REFERENCES = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(30)]


def run(name: str, indices: dict, predictions: list[str] | None, tied: int = 1) -> RunOutputs:
    if predictions is None:
        frame = None
    else:
        frame = pd.DataFrame({"id": range(len(predictions)), "reference": REFERENCES, "prediction": predictions})
    mask = NeuronMask(SHAPE, 0.01, indices=indices)
    per_kind = {kind: sum(len(ids) for ids in per_layer.values()) for kind, per_layer in indices.items()}
    return RunOutputs(name, mask, {"tied_at_cutoff": tied, "decided_by_tiebreak": tied - 1, "neurons_per_kind": per_kind},
                      {"distinct_changes": 10}, frame)


def test_masks_layers_and_quality_of_pairs():
    poor = [" ".join(reference.split()[:4]) for reference in REFERENCES]
    good = [" ".join(reference.split()[:9]) for reference in REFERENCES]
    baseline = run("old", {"in": {0: [1, 2, 3]}, "out": {2: [0]}}, poor, tied=3)
    system = run("new", {"in": {0: [1, 2], 1: [5]}, "out": {2: [0]}}, good)
    masks = mask_table([(baseline, system)])
    assert masks.loc[0, "jaccard"] == pytest.approx(3 / 5)
    assert (masks.loc[0, "baseline_decided_by_tiebreak"], masks.loc[0, "system_decided_by_tiebreak"]) == (2, 0)
    assert (masks.loc[0, "baseline_in_neurons"], masks.loc[0, "system_in_neurons"], masks.loc[0, "system_out_neurons"]) == (3, 3, 1)
    assert layer_distribution({"old": baseline.mask, "new": system.mask}).to_dict("list") == {"old": [3, 0, 1], "new": [2, 1, 1]}

    quality = quality_table("translation", [(baseline, system), (baseline, system)])
    assert list(quality["pair"].unique()) == ["new - old", "seed-aware (2 seeds)"]
    over_seeds = quality[quality["pair"] == "seed-aware (2 seeds)"]
    assert (over_seeds["segments"] == 60).all() and (over_seeds["difference"] > 0).all() and (over_seeds["seeds"] == 2).all()
    # the same runs twice: no spread between seeds, and both parts of the test reject
    assert (over_seeds["p_seeds"] == 0).all() and (over_seeds["p_segments"] < 0.01).all() and (over_seeds["p_value"] < 0.01).all()
    summary = difference_summary(quality).set_index("metric")
    assert summary.loc["bleu", "pairs"] == 2 and summary.loc["bleu", "system_higher"] == 2


def test_runs_on_different_segments_are_not_a_pair():
    baseline = run("a", {"in": {0: [1]}}, list(REFERENCES))
    system = run("b", {"in": {0: [1]}}, list(REFERENCES))
    system.predictions["id"] = system.predictions["id"] + 100
    with pytest.raises(ValueError, match="different test segments"):
        quality_table("translation", [(baseline, system)])


def test_probe_peak_is_set_only_against_the_lora_matched_to_this_run():
    params = {"seed": 1, "probe": {"kind": "gradient", "steps": 40}, "train": {"steps": 150}}
    probe = {"train_seconds": 56.0, "peak_memory_mb": 4740.0}
    matched = {"neft_budget": 9000, "seed": 1, "steps": 150, "peak_memory_mb": 5925.0}
    assert probe_costs(params, probe, matched, budget=9000)["probe_peak_vs_lora"] == pytest.approx(0.8)
    # What an experiment that skipped LoRA holds: its baseline commit's summary, made for another run.
    for stale in ({**matched, "neft_budget": 8000}, {**matched, "seed": 0}, {**matched, "steps": 60}, {}):
        costs = probe_costs(params, probe, stale, budget=9000)
        assert (costs["lora_train_peak_mb"], costs["probe_peak_vs_lora"]) == (None, None)
        assert costs["probe_peak_mb"] == 4740.0


def write_predictions(path: Path, predictions: list[str], ids: range = range(len(REFERENCES))) -> str:
    pd.DataFrame({"id": ids, "reference": REFERENCES, "prediction": predictions}).to_json(path, orient="records", lines=True)
    return str(path)


def compare_files(pairs: list[str], out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "scripts/compare_predictions.py"), *pairs, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)


def test_saved_prediction_files_compare_like_runs(tmp_path):
    poor = write_predictions(tmp_path / "poor.jsonl", [" ".join(reference.split()[:4]) for reference in REFERENCES])
    good = write_predictions(tmp_path / "good.jsonl", [" ".join(reference.split()[:9]) for reference in REFERENCES])
    result = compare_files([f"{poor}:{good}", f"{good}:{poor}"], tmp_path / "out")
    assert result.returncode == 0, result.stderr
    quality = pd.read_csv(tmp_path / "out/quality.csv")
    bleu = quality[quality["metric"] == "bleu"].set_index("pair")["difference"]
    assert bleu[f"{good} - {poor}"] > 0 and bleu[f"{poor} - {good}"] == pytest.approx(-bleu[f"{good} - {poor}"])
    assert bleu["seed-aware (2 seeds)"] == pytest.approx(0, abs=1e-9)  # the two pairs cancel
    assert quality.set_index("pair").loc["seed-aware (2 seeds)", "p_value"].min() > 0.5
    assert (tmp_path / "out/differences.csv").is_file() and "seed-aware rows" in (tmp_path / "out/summary.md").read_text()
    assert compare_files([f"{poor}:{good}"], tmp_path / "one").returncode == 0
    assert "single seed: test-segment variance only" in (tmp_path / "one/summary.md").read_text()


def test_prediction_files_of_other_segments_or_missing_fail_before_writing(tmp_path):
    first = write_predictions(tmp_path / "a.jsonl", list(REFERENCES))
    shifted = write_predictions(tmp_path / "b.jsonl", list(REFERENCES), ids=range(100, 100 + len(REFERENCES)))
    for pairs, message in (([f"{first}:{shifted}"], "hold different test segments"),
                           ([f"{first}:{tmp_path}/none.jsonl"], "no such predictions file"),
                           ([first], "each pair is BASELINE:SYSTEM")):
        result = compare_files(pairs, tmp_path / "out")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()
