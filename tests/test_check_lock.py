"""scripts/check_lock.py: a committed dvc.lock that the code, params or data no longer match fails
CI, checked from file hashes on a clone that has none of the DVC-cached outputs."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT, run

spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts/check_lock.py")
check_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_lock)

LOCK = {"stages": {
    "train": {"outs": [{"path": "artifacts/train/neft/lr0.01"}, {"path": "reports/train/neft/lr0.01"}]},
    "report": {"outs": [{"path": "reports/metrics.json"}]},
}}
DEFINED = {"train", "report"}


def test_missing_outputs_and_dependencies_on_them_are_not_staleness():
    status = {
        "train": [{"changed deps": {"artifacts/model": "deleted"}}, {"changed outs": {"artifacts/train/neft/lr0.01": "not in cache"}}],
        "report": [{"changed deps": {"reports/train": "modified"}}],  # a folder of outputs, some missing
    }
    lock = {"stages": {**LOCK["stages"], "prepare": {"outs": [{"path": "artifacts/model"}]}}}
    assert check_lock.stale_stages(status, lock, {"train", "report", "prepare"}) == {}


@pytest.mark.parametrize("change, reason", [
    ({"changed deps": {"params.yaml": {"seed": "modified"}}}, "param seed modified"),
    ({"changed deps": {"neft/selection.py": "modified"}}, "neft/selection.py modified"),
    ({"changed deps": {"data/custom": "deleted"}}, "data/custom deleted"),
    ({"changed outs": {"reports/metrics.json": "modified"}}, "committed output reports/metrics.json modified"),
    ("changed command", "changed command"),
])
def test_each_kind_of_change_makes_the_stage_stale(change, reason):
    assert check_lock.stale_stages({"report": [change]}, LOCK, DEFINED) == {"report": [reason]}


def test_a_stage_the_lock_does_not_record_is_stale():
    assert check_lock.stale_stages({"select": [{"changed outs": {"reports/selection": "deleted"}}]}, LOCK, {*DEFINED, "select"}) == {
        "select": ["not in dvc.lock"]}


def test_a_locked_stage_that_dvc_yaml_no_longer_defines_is_stale():
    """A renamed stage (train_neft -> train_neft@RATE) leaves its old entry, and old results, in the lock."""
    assert check_lock.stale_stages({}, LOCK, {"report"}) == {"train": ["in dvc.lock but not in dvc.yaml"]}


@pytest.mark.e2e
def test_a_clone_of_a_committed_run_passes_until_code_or_params_change(committed_tiny_run, tmp_path):
    repo, _, tiny_run_commit = committed_tiny_run
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["git", "checkout", "-q", tiny_run_commit], clone)
    check = [sys.executable, str(ROOT / "scripts/check_lock.py")]
    assert run(check, clone).returncode == 0
    module = clone / "neft/selection.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    failed = run(check, clone, check=False)
    assert failed.returncode == 1 and "select: neft/selection.py modified" in failed.stderr
    run(["git", "checkout", "neft/selection.py"], clone)
    params = clone / "params.yaml"
    params.write_text(params.read_text().replace("ratio: 0.06", "ratio: 0.05"))
    failed = run(check, clone, check=False)
    assert failed.returncode == 1 and "mask: param ratio modified" in failed.stderr
    run(["git", "checkout", "params.yaml"], clone)
    metrics = clone / "reports/metrics.json"
    metrics.write_text(metrics.read_text().replace('"seed": 0', '"seed": 7', 1))
    failed = run(check, clone, check=False)
    assert failed.returncode == 1 and "report: committed output reports/metrics.json modified" in failed.stderr
