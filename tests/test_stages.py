"""Every stage function in-process, on the tiny model and the example JSONL task, in a temporary
project directory: what each writes, that a second run with the same seed writes the same bytes,
that a user error stops the stage before it writes anything, and that dvc.yaml's `params` of each
stage are exactly the keys the stage reads."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import inside, random_batch
from peft import PeftModel
from test_dependencies import STAGES
from transformers import AutoModelForCausalLM, AutoTokenizer

import stages.train
from neft.artifacts import candidate_run, chosen_run, train_log_dir, validation_file, weights_dir
from neft.delta import load_delta
from neft.errors import UserError
from neft.evaluation import generate_greedy
from neft.io import write_json
from neft.masks import ModelShape, load_mask, neurons_for_ratio
from neft.models import load_model
from neft.provenance import FINGERPRINT_FILE
from stages.analyze import analyze
from stages.evaluate import evaluate
from stages.export import LORA_ADAPTER
from stages.mask import mask
from stages.prepare_data import prepare_data
from stages.prepare_model import prepare_model
from stages.report import report
from stages.score import score
from stages.select import select
from stages.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(project):
    directory, config, _ = project
    with inside(directory):
        yield config


def rerun_gives_the_same_bytes(paths: list[str], run) -> None:
    before = {path: Path(path).read_bytes() for path in paths}
    run()
    for path in paths:
        assert Path(path).read_bytes() == before[path], f"{path} changed on a rerun with the same seed"


def test_prepare_data_writes_the_splits(workspace):
    summary = prepare_data(workspace)
    for split in ("train", "valid", "test"):  # the example task keeps every line of its three files
        given = Path(workspace.task.files[split]).read_text().splitlines()
        written = Path(f"data/prepared/{split}.jsonl").read_text().splitlines()
        assert summary[f"{split}_examples"] == len(written) == len(given), split
    assert (summary["train_examples"], summary["valid_examples"], summary["test_examples"]) == (140, 20, 20)
    rerun_gives_the_same_bytes(["data/prepared/train.jsonl", "data/prepared/test.jsonl"], lambda: prepare_data(workspace))


def test_prepare_model_writes_weights_and_shape(workspace):
    summary = prepare_model(workspace)
    assert (summary["num_layers"], summary["d_model"], summary["d_ff"]) == (2, 64, 128)
    assert Path("artifacts/model/model.safetensors").is_file() and Path("artifacts/model/neft_shape.json").is_file()


def test_score_writes_float64_changes_that_resolve_every_neuron(workspace):
    summary = score(workspace)
    scores = pd.read_parquet("artifacts/scores/scores.parquet")
    assert summary["neurons"] == len(scores) == 2 * 2 * 128 == summary["distinct_changes"]
    assert str(scores["change"].dtype) == "float64" and (scores["change"] > 0).all()
    rerun_gives_the_same_bytes(["artifacts/scores/scores.parquet"], lambda: score(workspace))


def test_mask_writes_k_neurons_with_no_tie_and_the_budget(workspace):
    summary = mask(workspace)
    assert summary["num_neurons"] == 85 and (summary["tied_at_cutoff"], summary["decided_by_tiebreak"]) == (1, 0)
    assert json.loads(Path("artifacts/budget.json").read_text())["trainable_parameters"] == 85 * 64
    rerun_gives_the_same_bytes(["artifacts/mask/mask.json", "artifacts/budget.json"], lambda: mask(workspace))


def test_a_control_mask_changes_the_mask_but_not_the_budget_the_matched_lora_reads(project, tmp_path):
    """Why `dvc exp run -S mask.strategy=random` retrains NeFT but not LoRA: train_lora depends on
    artifacts/budget.json and no mask file or mask param, and the budget's bytes stay the same."""
    directory, config, _ = project
    lora_stage = next(stage for name, stage in STAGES.items() if name.startswith("train_lora@"))
    assert "artifacts/budget.json" in lora_stage["deps"] and not any(dep.startswith("artifacts/mask") for dep in lora_stage["deps"])
    assert not any(str(param).startswith("mask") for param in lora_stage["params"])
    shutil.copytree(directory, tmp_path / "project")
    with inside(tmp_path / "project"):
        cosine = Path("artifacts/mask/mask.json").read_bytes(), Path("artifacts/budget.json").read_bytes()
        mask(dataclasses.replace(config, mask=dataclasses.replace(config.mask, strategy="random")))
        random = Path("artifacts/mask/mask.json").read_bytes(), Path("artifacts/budget.json").read_bytes()
    assert random[0] != cosine[0] and random[1] == cosine[1]


@pytest.mark.parametrize("run", ["probe", "full", "neft", "lora"])
def test_train_saves_the_run_and_its_summary(workspace, run):
    summary = train(run, workspace)
    directory = "probe" if run == "probe" else candidate_run(run, getattr(workspace.methods, run).learning_rates[0])
    weights = weights_dir(directory) / {"probe": "model.safetensors", "full": "model.safetensors",
                                        "neft": "neft_delta.safetensors", "lora": "adapter_model.safetensors"}[run]
    assert weights.is_file() and summary["run"] == directory
    assert summary["steps"] == 8 and summary["autocast"] == "none"
    assert len(pd.read_csv(train_log_dir(directory) / "plots/metrics/loss.tsv", sep="\t")) == 8
    if run == "neft":
        assert summary["trainable_parameters"] == 85 * 64
        rerun_gives_the_same_bytes([weights], lambda: train(run, workspace))


def test_a_failed_run_leaves_its_previous_reports_whole(workspace, monkeypatch):
    train("neft", workspace)
    log_dir = train_log_dir(candidate_run("neft", workspace.methods.neft.learning_rates[0]))
    before = {path: path.read_bytes() for path in sorted(log_dir.rglob("*")) if path.is_file()}
    assert log_dir / "summary.json" in before and log_dir / "metrics.json" in before

    real_loop = stages.train.train_loop

    def train_then_fail(*args, **kwargs):
        real_loop(*args, **kwargs)  # every step logged
        raise RuntimeError("killed after the step logs were written")

    monkeypatch.setattr(stages.train, "train_loop", train_then_fail)
    with pytest.raises(RuntimeError, match="killed after the step logs"):
        train("neft", workspace)
    after = {path: path.read_bytes() for path in sorted(log_dir.rglob("*")) if path.is_file()}
    assert after == before, "the failed run changed the previous run's step logs or summary"
    assert not [path.name for path in log_dir.parent.iterdir() if path.name.startswith(".")], "scratch left behind"


def test_results_are_readable_by_others_under_the_usual_umask(workspace):
    previous = os.umask(0o022)
    try:
        train("probe", workspace)
    finally:
        os.umask(previous)
    for path in (weights_dir("probe"), weights_dir("probe") / "model.safetensors", train_log_dir("probe")):
        assert path.stat().st_mode & 0o055 == (0o055 if path.is_dir() else 0o044), f"{path}: {oct(path.stat().st_mode)}"


def test_select_follows_validation_loss_and_reads_nothing_of_the_test_split(project, tmp_path):
    directory, config, _ = project
    select_stage = STAGES["select"]
    assert not any(dep.startswith(("reports/eval", "data/")) for dep in select_stage["deps"]), "select must not see test data"
    grid = (0.005, 0.01, 0.02)
    neft = dataclasses.replace(config.methods.neft, learning_rates=grid)
    wide = dataclasses.replace(config, methods=dataclasses.replace(config.methods, neft=neft))
    shutil.copytree(directory, tmp_path / "project")
    with inside(tmp_path / "project"):
        trained = weights_dir(chosen_run("neft"))
        for rate in grid:  # a candidate per rate: the trained one's weights, told apart by their recorded fingerprints
            candidate = weights_dir(candidate_run("neft", rate))
            if candidate != trained:
                shutil.copytree(trained, candidate)
            record = json.loads((candidate / FINGERPRINT_FILE).read_text())
            write_json(candidate / FINGERPRINT_FILE, {**record, "sha256": f"weights of {rate}"})
        for losses, chosen, status in (((3.0, 2.0, 2.5), 0.01, "bracketed"), ((2.0, 2.5, 3.0), 0.005, "not bracketed")):
            for rate, loss in zip(grid, losses, strict=True):
                write_json(validation_file(candidate_run("neft", rate)), {"best_valid_loss": loss, "best_step": 1})
            summary = select(wide)
            assert summary["neft"] == {"learning_rate": chosen, "status": status}
            written = json.loads(Path("reports/selection/neft.json").read_text())
            assert written["chosen"]["run"] == chosen_run("neft") == f"neft/lr{chosen}"
            assert written["weights_sha256"] == f"weights of {chosen}"  # what evaluate@neft depends on
            assert [c["valid_loss"] for c in written["candidates"]] == list(losses)


@pytest.mark.parametrize("method", ["base", "full", "neft", "lora"])
def test_evaluate_writes_predictions_and_metrics(workspace, method):
    metrics = evaluate(method, workspace)
    predictions = pd.read_json(f"reports/eval/{method}/predictions.jsonl", lines=True, dtype=False)
    assert metrics["test_examples"] == len(predictions) > 0 and {"bleu", "chrf"} <= set(metrics)


@pytest.mark.parametrize("method", ["full", "neft", "lora"])
def test_exported_model_alone_reproduces_the_evaluation_exactly(workspace, method):
    model = AutoModelForCausalLM.from_pretrained(f"artifacts/export/{method}")
    tokenizer = AutoTokenizer.from_pretrained(f"artifacts/export/{method}")
    evaluated = pd.read_json(f"reports/eval/{method}/predictions.jsonl", lines=True, dtype=False)
    predictions = generate_greedy(model, tokenizer, list(evaluated["prompt"]), workspace.task.max_new_tokens,
                                  workspace.evaluate.batch_size, autocast_dtype=None)
    assert predictions == list(evaluated["prediction"])


def test_neft_lora_adapter_is_the_merged_model(workspace):
    exported = AutoModelForCausalLM.from_pretrained("artifacts/export/neft")
    adapted = PeftModel.from_pretrained(load_model(Path("artifacts/model")), f"artifacts/export/neft/{LORA_ADAPTER}")
    batch = random_batch(exported.config.vocab_size, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(adapted(**batch).logits, exported(**batch).logits, rtol=1e-5, atol=1e-5)
    merged = adapted.merge_and_unload().state_dict()  # fp32: adding the one-hot products is exact
    for name, tensor in exported.state_dict().items():
        assert torch.equal(merged[name], tensor), name
    summary = json.loads(Path("artifacts/export/neft/export_summary.json").read_text())
    delta = load_delta(weights_dir(chosen_run("neft")))
    assert summary["lora_adapter"]["ranks"] == {name: len(p["rows"]) + len(p["columns"]) for name, p in delta.modules.items()}


def test_analyze_writes_plots_and_overlaps(workspace):
    result = analyze(workspace)
    overlaps = result["jaccard"]
    assert overlaps["cosine@0.06"] == 1.0 and overlaps["reversed@0.06"] == 0.0  # the run's mask is the cosine one
    # Masks of other budgets nest around the run's (the same ranking, cut at k): |small| / |large|.
    run_neurons = load_mask(Path("artifacts/mask/mask.json")).num_neurons
    scores = pd.read_parquet("artifacts/scores/scores.parquet")
    shape = ModelShape(**json.loads(Path("artifacts/model/neft_shape.json").read_text()))
    assert sorted(overlaps) == sorted([*(f"cosine@{r}" for r in workspace.analysis.compare_ratios),
                                       "cosine@0.06", "reversed@0.06", "random@0.06"])
    for ratio in workspace.analysis.compare_ratios:
        neurons = neurons_for_ratio(ratio, shape, pool_size=len(scores))
        assert neurons != run_neurons
        assert overlaps[f"cosine@{ratio}"] == pytest.approx(min(neurons, run_neurons) / max(neurons, run_neurons)), ratio
    assert 0.0 < overlaps["random@0.06"] < 1.0
    assert Path("reports/analysis/score_histogram.png").is_file()


def test_report_writes_the_table_significance_and_metrics(workspace):
    document = report(workspace)
    assert set(document) == {"base", "full", "neft", "lora", "mask", "significance"}
    assert (document["mask"]["tied_at_cutoff"], document["mask"]["decided_by_tiebreak"]) == (1, 0)
    significance = pd.read_csv("reports/significance.csv")
    assert len(significance) == 3 * 2  # 3 comparisons x BLEU, chrF
    for method in ("base", "full", "neft", "lora"):  # each method's score with its 95 % interval
        assert document[method]["bleu_ci95"] >= 0 and document[method]["chrf_ci95"] >= 0
    assert set(significance[significance["metric"] == "bleu"]["system_ci95"].round(4)) == {document["neft"]["bleu_ci95"]}
    for method in ("full", "neft", "lora"):  # what chooses a learning rate: the kept checkpoint's validation loss
        summary = json.loads((train_log_dir(chosen_run(method)) / "summary.json").read_text())
        assert document[method]["valid_loss"] == round(summary["best_valid_loss"], 4)
        # what it was made with, unrounded, for the collector to check against the experiment's params
        assert (document[method]["learning_rate"], document[method]["steps"], document[method]["seed"]) == (
            getattr(workspace.methods, method).learning_rates[0], workspace.train.steps, workspace.seed)
        assert document[method]["learning_rate_bracketed"] is False  # one rate: nothing on either side
    assert "valid_loss" not in document["base"] and "learning_rate" not in document["base"]
    results = Path("reports/results.md").read_text()
    verdict = results.split("\n\n")[2]  # the first table, right under the title and one sentence
    assert verdict.startswith("| method") and "NeFT - this" in verdict and "one rate, not searched" in verdict
    assert "**Single seed** (seed 0)" in results
    assert Path("reports/plots/valid_loss.png").is_file()  # every candidate's validation loss
    cost = json.loads(Path("reports/cost.json").read_text())
    probe = json.loads(Path("reports/train/probe/summary.json").read_text())
    neft = json.loads((train_log_dir(chosen_run("neft")) / "summary.json").read_text())
    assert cost["neft"]["end_to_end_seconds"] == pytest.approx(probe["train_seconds"] + neft["train_seconds"])
    assert cost["lora"]["end_to_end_seconds"] == cost["lora"]["train_seconds"]
    assert (document["mask"]["ratio"], document["mask"]["strategy"]) == (workspace.ratio, workspace.mask.strategy)
    rerun_gives_the_same_bytes(["reports/metrics.json"], lambda: report(workspace))


def test_a_user_error_stops_a_stage_before_it_writes(workspace):
    before = Path("artifacts/mask/mask.json").read_bytes()
    with pytest.raises(UserError, match="the candidate pool"):
        mask(dataclasses.replace(workspace, ratio=0.99))
    with pytest.raises(UserError, match="unknown training run 'prefix'"):
        train("prefix", workspace)
    with pytest.raises(UserError, match=r"the learning rate of neft must be a number > 0, got '-1e-3'"):
        train("neft", "-1e-3", workspace)
    several = dataclasses.replace(workspace.methods.neft, learning_rates=(0.01, 0.02))
    with pytest.raises(UserError, match=r"methods.neft.learning_rates has 2 rates: give one"):
        train("neft", dataclasses.replace(workspace, methods=dataclasses.replace(workspace.methods, neft=several)))
    assert Path("artifacts/mask/mask.json").read_bytes() == before


def covers(declared: str, read: str) -> bool:
    return read == declared or read.startswith(declared + ".")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_are_exactly_the_keys_it_reads(project, stage):
    """A key read but not listed leaves the stage stale when it changes; one listed but not read
    reruns the stage for nothing. A listed section covers the keys under it."""
    _, _, reads = project
    declared = STAGES[stage].get("params", [])
    read = reads.get(stage) or reads[stage.split("@")[0]]  # one grid rate's stage reads what every rate's does
    unlisted = sorted(key for key in read if not any(covers(entry, key) for entry in declared))
    unread = sorted(entry for entry in declared if not any(covers(entry, key) for key in read))
    assert not unlisted and not unread, f"{stage}: reads but does not list {unlisted}; lists but does not read {unread}"
