"""Sharing experiments the DVC way (docs/experiments.md, "Sharing experiments"): `dvc exp push` sends
an experiment's git ref to a git remote and its outputs to the DVC remote, and `dvc exp pull` in
another clone brings both back, so `dvc exp apply` restores the experiment's outputs there. Run on
the tiny pipeline, with a bare git repository and a local-directory DVC remote standing in for a
team's git host and storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_repository, run

pytestmark = pytest.mark.e2e

TINY = ["model=tiny-llama", "task=jsonl"]
NAME = "shared-ratio"


def test_an_experiment_pushed_from_one_clone_is_pulled_and_restored_in_another(committed_tiny_run, tmp_path):
    source, _, tiny_run_commit = committed_tiny_run
    mine = copy_repository(source, tmp_path / "mine")
    run(["git", "reset", "-q", "--hard", tiny_run_commit], mine)
    run(["dvc", "checkout", "--force"], mine)

    # The team's remotes: a git host (a bare repository) and storage (a local directory here).
    git_remote, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", str(git_remote)], tmp_path)
    run(["git", "remote", "add", "origin", str(git_remote)], mine)
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], mine)
    run(["git", "add", ".dvc/config"], mine)
    run(["git", "commit", "-qm", "DVC remote: the team's storage"], mine)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], mine)
    run(["dvc", "push"], mine)  # the baseline commit's outputs, as a team would share them

    overrides = sum((["-S", override] for override in TINY), [])
    run(["dvc", "exp", "run", "-n", NAME, "-S", "ratio=0.03", *overrides], mine)
    expected = json.loads((mine / "reports/metrics.json").read_text())
    assert expected["mask"]["ratio"] == 0.03
    mask = _files(mine / "artifacts/mask")
    assert mask
    pushed = run(["dvc", "exp", "push", "origin", NAME], mine).stdout
    assert NAME in pushed, pushed
    assert any(storage.rglob("*")), "dvc exp push sent the experiment's outputs to the DVC remote"
    assert NAME in run(["dvc", "exp", "list", "origin"], mine).stdout

    theirs = tmp_path / "theirs"
    run(["git", "clone", "-q", "--branch", "main", str(git_remote), str(theirs)], tmp_path)
    assert not (theirs / ".dvc/cache").exists()
    pulled = run(["dvc", "exp", "pull", "origin", NAME], theirs).stdout
    assert NAME in pulled, pulled
    assert NAME in run(["dvc", "exp", "show", "--json"], theirs).stdout
    run(["dvc", "exp", "apply", NAME], theirs)
    assert json.loads((theirs / "reports/metrics.json").read_text()) == expected
    status = run(["dvc", "status"], theirs).stdout
    assert "up to date" in status, status  # every output of the experiment is there, from the pulled cache
    assert _files(theirs / "artifacts/mask") == mask


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
