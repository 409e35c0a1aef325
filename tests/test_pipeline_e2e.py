"""The whole DVC pipeline on the tiny configuration, in a temporary git repository."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import sacrebleu
import torch
import yaml
from conftest import copy_repository, run, stages_run
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

TINY = ["model=tiny-llama", "task=jsonl"]
# The tiny model's grids have one rate each: full FT 1e-3, NeFT and LoRA 1e-2.
ALL_STAGES = {
    "prepare_data", "prepare_model", "probe", "score", "mask", "train_full@0.001", "train_neft@0.01", "train_lora@0.01",
    "select", "evaluate_base", "evaluate@full", "evaluate@neft", "evaluate@lora", "export@full", "export@neft", "export@lora",
    "analyze", "report",
}
RATIO_DOWNSTREAM = {"mask", "train_neft@0.01", "train_lora@0.01", "select", "evaluate@neft", "evaluate@lora", "export@neft",
                    "export@lora", "analyze", "report"}


@pytest.fixture(scope="module")
def tiny_run(committed_tiny_run, tmp_path_factory) -> tuple[Path, str]:
    """A private copy of the session's committed tiny run (params.yaml composed for the tiny model,
    every stage run by `dvc repro`; tests/test_ci.py checks that it ran all of them), and its commit."""
    repo, _, tiny_run_commit = committed_tiny_run
    return copy_repository(repo, tmp_path_factory.mktemp("neft-e2e") / "repo"), tiny_run_commit


@pytest.fixture
def repo(tiny_run) -> Path:
    """The workspace as the committed tiny run left it, whatever experiments earlier tests ran in it."""
    repo, tiny_run_commit = tiny_run
    run(["git", "reset", "-q", "--hard", tiny_run_commit], repo)
    run(["git", "clean", "-fdq"], repo)
    run(["dvc", "checkout", "--force"], repo)
    return repo


def test_repro_writes_every_artifact(repo):
    for path in ["data/prepared/train.jsonl", "artifacts/model/model.safetensors", "artifacts/probe/model.safetensors",
                 "artifacts/scores/scores.parquet", "artifacts/mask/mask.json", "artifacts/train/neft/lr0.01/neft_delta.safetensors",
                 "artifacts/train/lora/lr0.01/adapter_model.safetensors", "artifacts/train/full/lr0.001/model.safetensors",
                 "reports/selection/neft.json",
                 "reports/results.md", "reports/results.csv", "reports/plots/loss.png", "reports/plots/neurons_per_layer.png",
                 "reports/eval/neft/predictions.jsonl", "reports/train/neft/lr0.01/plots/metrics/loss.tsv",
                 "reports/analysis/analysis.json", "reports/analysis/score_histogram.png",
                 "artifacts/export/full/model.safetensors", "artifacts/export/neft/lora_adapter/adapter_model.safetensors"]:
        assert (repo / path).is_file(), path
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics) == {"base", "full", "neft", "lora", "mask", "significance"}
    assert {"bleu", "chrf", "trainable_percent"} <= set(metrics["neft"])
    assert metrics["neft"]["trainable_percent"] == pytest.approx(6.0, abs=0.1)
    lora = json.loads((repo / "reports/train/lora/lr0.01/summary.json").read_text())
    assert abs(lora["trainable_parameters"] - lora["neft_budget"]) <= lora["parameters_per_rank"] / 2


def test_mask_is_the_k_most_changed_of_an_independent_float64_recomputation(repo):
    base = load_file(repo / "artifacts/model/model.safetensors")
    probe = load_file(repo / "artifacts/probe/model.safetensors")
    rows = []
    for name, kind, dim in (("mlp.up_proj", "in", 1), ("mlp.down_proj", "out", 0)):
        for layer in range(2):
            key = f"model.layers.{layer}.{name}.weight"
            cosine = torch.nn.functional.cosine_similarity(base[key].double(), probe[key].double(), dim=dim, eps=0)
            rows += [(1 - float(c), layer, kind, index) for index, c in enumerate(cosine)]
    # tiny-llama: 90,624 parameters, d_model 64, so ratio 0.06 is k = round(84.96) = 85 of a pool of 512.
    assert len(rows) == 512
    expected = {(kind, layer, index) for _, layer, kind, index in sorted(rows, reverse=True)[:85]}
    mask = json.loads((repo / "artifacts/mask/mask.json").read_text())
    selected = {
        (kind, int(layer), index) for kind, per_layer in mask["indices"].items() for layer, ids in per_layer.items() for index in ids
    }
    assert mask["num_neurons"] == 85 and selected == expected
    summary = json.loads((repo / "artifacts/mask/summary.json").read_text())
    assert (summary["tied_at_cutoff"], summary["decided_by_tiebreak"]) == (1, 0)
    scores = pd.read_parquet(repo / "artifacts/scores/scores.parquet")
    assert scores["change"].nunique() == 512


def test_reported_metrics_equal_sacrebleu_recomputed_from_the_saved_predictions(repo):
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    tokenize = yaml.safe_load((repo / "params.yaml").read_text())["task"]["metric_options"]["bleu_tokenize"]
    for method in ("base", "full", "neft", "lora"):
        saved = pd.read_json(repo / f"reports/eval/{method}/predictions.jsonl", lines=True, dtype=False)
        references = [list(saved["reference"])]
        bleu = sacrebleu.corpus_bleu(list(saved["prediction"]), references, tokenize=tokenize).score
        assert metrics[method]["bleu"] == pytest.approx(bleu, abs=1e-4)
        assert metrics[method]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(list(saved["prediction"]), references).score, abs=1e-4)
    assert set(metrics["significance"]) == {"neft_vs_lora", "neft_vs_full", "neft_vs_base"}
    assert 0 < metrics["significance"]["neft_vs_lora"]["bleu_p"] <= 1


# For each stage, a library module it imports: editing it must make `dvc status` report the stage.
LIBRARY_MODULE_OF = {
    "prepare_data": "neft/data/sources.py", "prepare_model": "neft/models.py", "probe": "neft/training.py",
    "score": "neft/neurons.py", "mask": "neft/masks.py", "train_full@0.001": "neft/methods.py", "train_neft@0.01": "neft/delta.py",
    "train_lora@0.01": "neft/tokenization.py", "select": "neft/selection.py", "evaluate_base": "neft/evaluation.py",
    "evaluate@neft": "neft/methods.py",
    "analyze": "neft/analysis.py", "report": "neft/significance.py", "export@neft": "neft/export.py",
}


def test_editing_an_imported_library_module_makes_the_stage_stale(repo):
    missed = []
    for stage, path in sorted(LIBRARY_MODULE_OF.items()):
        module = repo / path
        original = module.read_text()
        module.write_text(original + "\n# an edit\n")
        try:
            stale = json.loads(run(["dvc", "status", "--json"], repo).stdout)
        finally:
            module.write_text(original)
        if stage not in stale:
            missed.append(f"editing {path} left {stage} up to date")
    assert not missed, missed


def test_second_repro_does_nothing(repo):
    again = run(["dvc", "repro"], repo)
    assert stages_run(again.stdout) == set()
    assert run(["dvc", "status"], repo).stdout.strip().endswith("Data and pipelines are up to date.")


def test_a_comment_in_the_training_code_reruns_the_training_runs_and_the_report_only(repo):
    """The runs rerun (their code changed) and train the same weights. Their timings differ, but they
    are only in reports/train/, which only the report reads: the rate choice reads each candidate's
    weights and validation.json, so it and everything after it stay up to date."""
    module = repo / "neft/training.py"
    module.write_text(module.read_text() + "\n# a comment\n")
    output = run(["dvc", "repro"], repo).stdout
    training_runs = {"probe", "train_full@0.001", "train_neft@0.01", "train_lora@0.01"}
    assert stages_run(output) == training_runs | {"report"}, output


def test_returning_to_earlier_probe_params_restores_the_probe_from_the_run_cache(repo):
    """Switching to another probe and back reruns only the mask: DVC's run cache holds the first
    probe's run and its scores, which it can only do because none of those stages' outputs is
    `cache: false` or `persist: true`. The mask's are persistent (a refused ratio keeps the old mask),
    so it reruns, in seconds."""
    probe = (repo / "artifacts/probe/model.safetensors").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["probe"]["learning_rate"] *= 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert stages_run(run(["dvc", "repro", "mask"], repo).stdout) == {"probe", "score", "mask"}
    run(["git", "checkout", "params.yaml"], repo)
    back = run(["dvc", "repro", "mask"], repo).stdout
    assert stages_run(back) == {"mask"}, back
    assert "Stage 'probe' is cached - skipping run" in back and "Stage 'score' is cached - skipping run" in back
    assert (repo / "artifacts/probe/model.safetensors").read_bytes() == probe


def test_a_wider_grid_trains_only_the_new_rates_and_evaluates_only_the_choice(repo):
    """Adding rates to NeFT's grid trains them alone: the existing candidate is not rerun, and the
    chosen run alone is evaluated (again only if the choice moved)."""
    delta = (repo / "artifacts/train/neft/lr0.01/neft_delta.safetensors").read_bytes()
    output = run(["dvc", "exp", "run", "-S", "methods.neft.learning_rates=[0.003,0.01,0.03]",
                  *sum((["-S", override] for override in TINY), [])], repo).stdout
    selection = json.loads((repo / "reports/selection/neft.json").read_text())
    chosen = selection["chosen"]["learning_rate"]
    expected = {"train_neft@0.003", "train_neft@0.03", "select", "report"}
    if chosen != 0.01:
        expected |= {"evaluate@neft", "export@neft", "analyze"}
    assert stages_run(output) == expected, output
    assert (repo / "artifacts/train/neft/lr0.01/neft_delta.safetensors").read_bytes() == delta
    losses = {c["learning_rate"]: c["valid_loss"] for c in selection["candidates"]}
    assert chosen == min(losses, key=losses.get) and set(losses) == {0.003, 0.01, 0.03}
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["neft"]["learning_rate"] == chosen
    assert metrics["neft"]["learning_rate_bracketed"] == (chosen == 0.01)


def test_bad_ratio_fails_cleanly_and_keeps_the_old_mask(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    before = (repo / "artifacts/mask/mask.json").read_bytes()
    params["ratio"] = 0.95
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        failed = run([sys.executable, "-m", "stages.mask"], repo, check=False)
    finally:
        run(["git", "checkout", "params.yaml"], repo)
    assert failed.returncode == 2, "a user error exits 2"
    assert failed.stderr.count("\n") == 1, "one line, no traceback"
    assert "error: ratio 0.95 needs" in failed.stderr and "candidate pool has only" in failed.stderr
    assert (repo / "artifacts/mask/mask.json").read_bytes() == before
    assert not list((repo / "artifacts").glob(".mask.*")), "no half-written scratch directory may remain"


@pytest.mark.parametrize(("key", "value", "stages", "message"), [
    # The mask's outputs are cached; a refused ratio used to delete them all the same.
    ("ratio", 0, {"mask"}, "ratio = 0: must be a number in (0, 1)"),
    # Stale: evaluate_base, evaluate@* and analyze, whose outputs (`cache: false`) only git can bring back.
    ("evaluate.batch_size", 0, {"evaluate_base", "evaluate@full", "evaluate@neft", "evaluate@lora", "analyze"},
     "evaluate.batch_size = 0: must be an integer >= 1"),
])
def test_a_stage_that_refuses_its_input_under_dvc_repro_leaves_its_previous_outputs(repo, key, value, stages, message):
    """DVC deletes a stage's outputs before running its command unless they are `persist: true`
    (dvc.yaml, "Outputs that stay"): the refusing stage exits 2 with one line, `dvc repro` fails, and
    every output of the pipeline, dvc.lock included, keeps its bytes."""
    before = _output_files(repo)
    failed = _repro_with(repo, key, value)
    _assert_refused_by_one_of(failed, stages, message)
    assert _output_files(repo) == before
    assert run(["dvc", "status"], repo).stdout.strip().endswith("Data and pipelines are up to date."), "nothing to rerun"


def test_a_report_that_fails_under_dvc_repro_leaves_the_previous_report(repo):
    """The report computes everything before it writes, and replaces each output whole (the plots as one
    folder), all of them persistent: a failure midway leaves every previous table, metric and plot."""
    before = _output_files(repo)
    library = repo / "neft/report.py"
    library.write_text(library.read_text() + "\n\ndef verdict_table(*args, **kwargs):\n    raise RuntimeError('injected')\n")
    failed = run(["dvc", "repro"], repo, check=False)
    assert failed.returncode != 0 and "injected" in failed.stdout + failed.stderr
    assert stages_run(failed.stdout) == {"report"}, failed.stdout
    assert _output_files(repo) == before


def test_a_refused_probe_loses_its_cached_outputs_until_dvc_checkout(repo):
    """The probe's outputs are not persistent, so that DVC's run cache can restore the probe (it
    cannot for a stage with a persistent output): DVC deletes them before the refusing stage runs, and
    `dvc checkout` brings them back from the cache, byte for byte."""
    before = _output_files(repo)
    failed = _repro_with(repo, "probe.steps", 0)
    _assert_refused_by_one_of(failed, {"probe"}, "probe.steps = 0: must be an integer >= 1")
    assert not (repo / "artifacts/probe").exists() and not (repo / "reports/train/probe").exists()
    assert {name: data for name, data in before.items() if not name.startswith(("artifacts/probe/", "reports/train/probe/"))} \
        == _output_files(repo, missing_ok=True), "the probe's outputs alone went"
    run(["dvc", "checkout"], repo)
    assert _output_files(repo) == before


def _repro_with(repo: Path, key: str, value: object):
    """`dvc repro` with params.yaml's dotted `key` set to `value`; params.yaml restored afterwards."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    section, _, name = key.rpartition(".")
    (params[section] if section else params)[name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return run(["dvc", "repro"], repo, check=False)
    finally:
        run(["git", "checkout", "params.yaml"], repo)


def _assert_refused_by_one_of(failed, stages: set[str], message: str) -> None:
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output
    ran = stages_run(output)
    assert len(ran) == 1 and ran <= stages, output  # dvc repro stops at the first stage that fails
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output  # the stage's one line
    assert "Traceback" not in output
    assert re.search(rf"failed to reproduce '{re.escape(next(iter(ran)))}'.*exited with 2", output), output


def _output_files(repo: Path, missing_ok: bool = False) -> dict[str, bytes]:
    """Every file of every output dvc.lock records, and dvc.lock itself: path -> bytes."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    files = {"dvc.lock": (repo / "dvc.lock").read_bytes()}
    for out in {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}:
        path = repo / out
        assert path.exists() or missing_ok, out
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[file.relative_to(repo).as_posix()] = file.read_bytes()
    return files


def test_queued_ratio_sweep_reuses_the_probe_and_collects_into_a_budget_curve(repo, tmp_path):
    overrides = sum((["-S", override] for override in TINY), [])
    # Ratios no other test runs, so no stage of theirs is in the run cache yet. The queue takes a
    # list (`ratio=0.03,0.09` queues two); one queued run is enough to test it and saves a minute.
    run(["dvc", "exp", "run", "--queue", "-S", "ratio=0.03", *overrides], repo)
    run(["dvc", "exp", "run", "--run-all", "-j", "1"], repo)  # runs the queue and waits for it
    status = run(["dvc", "queue", "status"], repo).stdout
    assert "Success" in status and not re.search(r"Failed|Queued|Running", status), status
    names = re.findall(r"^\S+\s+(\S+)\s+.*Success", status, flags=re.MULTILINE)
    assert len(names) == 1, status
    log = run(["dvc", "queue", "logs", names[0]], repo).stdout
    assert stages_run(log) == RATIO_DOWNSTREAM, log  # probe, scores, full FT and base eval come from the cache
    collected = tmp_path / "experiments"
    run([sys.executable, "scripts/collect_experiments.py", "--out", str(collected)], repo)
    curve = pd.read_csv(collected / "budget_curve_translation_bleu.csv")
    # The baseline commit (0.06) and the queued ratio, each with NeFT and matched LoRA.
    for method in ("neft", "lora"):
        assert {0.03, 0.06} <= set(curve[curve["method"] == method]["ratio"]), curve

    # Masks read back from the experiment and the baseline commit: cosine masks of one probe at two
    # budgets are nested, so their Jaccard overlap is the smaller k over the larger.
    revisions = [names[0], "HEAD"]
    run([sys.executable, "scripts/mask_overlap.py", *revisions, "--out", str(collected)], repo)
    overlap = json.loads((collected / "mask_overlap.json").read_text())
    sizes = sorted(int(re.search(r"(\d+) neurons", text).group(1)) for text in overlap["masks"].values())
    assert sizes[0] < sizes[1]
    assert overlap["jaccard"][revisions[0]][revisions[1]] == pytest.approx(sizes[0] / sizes[1])
    assert overlap["jaccard"][revisions[0]][revisions[0]] == 1.0
