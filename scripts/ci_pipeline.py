"""CI: rerun the CI-sized pipeline where a change made it stale, and report what changed against a base.

Usage: python scripts/ci_pipeline.py --base REV [--override HYDRA_OVERRIDE ...]
  e.g. python scripts/ci_pipeline.py --base origin/main
       python scripts/ci_pipeline.py --base HEAD~1 --override model=tiny-llama --override task=jsonl --override seed=1

  --base REV        git revision to compare with (a pull request's base commit, the commit before a push)
  --override O      Hydra override of the CI-sized configuration, repeatable. The default is
                    `model=tiny-llama task=jsonl` (random-init 2-layer Llama, the example JSONL data:
                    the whole pipeline in a minute or two on a CPU). Given overrides REPLACE that
                    default: repeat model=/task= if you still want them.

In the repository root it
  1. writes params.yaml: conf/ composed with the overrides (as scripts/compose_params.py does),
  2. finds the base's run of that configuration, reproducing the base if need be (below),
  3. starts the workspace from that run: its dvc.lock and git-tracked (`cache: false`) outputs
     restored from git, its cached outputs with `dvc checkout` from the DVC cache,
  4. prints the stages `dvc status --json` then reports stale (the source of truth: the code,
     params and data the change from base to workspace touched),
  5. reruns them and what they feed: `dvc repro --downstream STALE...`,
  6. prints `dvc params diff BASE_RUN --md` and `dvc metrics diff BASE_RUN --md`, and appends them
     to the file $GITHUB_STEP_SUMMARY names, when set (the GitHub Actions job summary).
It exits non-zero when a git or dvc command fails, e.g. when a stage fails in `dvc repro`.

The base run. `dvc params diff REV` / `dvc metrics diff REV` read params.yaml and
reports/metrics.json as committed at REV, so they compare like with like only if REV committed a
run of this same CI configuration. REV is the base run when it did: its params.yaml equals its own
conf/ composed with the overrides, its dvc.lock records those params, and it has the metrics file.
Otherwise (the usual case: main commits params.yaml for the default SmolLM2 configuration) REV is
reproduced: `git worktree add --detach` of REV in a temporary folder, params.yaml composed there
from REV's conf/ with the same overrides, `dvc repro` using this workspace's DVC cache (`dvc cache
dir --local`), the run committed there as a throwaway commit (on no branch, no ref keeps it), the
worktree removed. That commit is the base run. Reproducing the base costs one full run of the CI
configuration, and DVC's run cache does not shorten it much: DVC keeps no run-cache entry for a
stage with `cache: false` or `persist: true` outputs, which most stages here have. (`dvc exp run` cannot do this: it
runs on top of HEAD only.)

This rewrites params.yaml, dvc.lock and the pipeline's outputs in the workspace: run it in a CI
checkout or a throwaway clone, not in a working copy you care about.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from neft import use_offline_environment
from neft.config import ConfigError, compose_params

ROOT = Path(__file__).resolve().parents[1]

CI_OVERRIDES = ["model=tiny-llama", "task=jsonl"]
METRICS_FILE = "reports/metrics.json"  # the `metrics:` output of dvc.yaml's report stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare with")
    parser.add_argument("--override", action="append", metavar="O",
                        help=f"Hydra override, repeatable; replaces the default {' '.join(CI_OVERRIDES)}")
    return parser.parse_args(argv)


def run(command: list[str], cwd: Path, capture: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a command, raise CalledProcessError if it fails; its stdout, or "" when streamed to ours."""
    sys.stdout.flush()
    result = subprocess.run(command, cwd=cwd, check=True, text=True, stdout=subprocess.PIPE if capture else None,
                            env=env and {**os.environ, **env})
    return result.stdout or ""


def write_params(repo: Path, overrides: list[str]) -> None:
    """params.yaml of `repo`: its conf/ composed with the overrides, written as scripts/compose_params.py does."""
    params = compose_params(overrides, config_dir=repo / "conf")
    (repo / "params.yaml").write_text(OmegaConf.to_yaml(params), encoding="utf-8")


def lookup(params: dict[str, Any], dotted: str) -> Any:
    """params["a"]["b"] for "a.b", None when it is not there."""
    for key in dotted.split("."):
        if not isinstance(params, dict) or key not in params:
            return None
        params = params[key]
    return params


def lock_matches_params(lock: dict[str, Any], params: dict[str, Any]) -> bool:
    """True when every parameter that dvc.lock recorded for a stage has the value params.yaml has now."""
    return all(
        lookup(params, key) == value
        for stage in lock.get("stages", {}).values()
        for key, value in stage.get("params", {}).get("params.yaml", {}).items()
    )


def git_show(repo: Path, rev: str, path: str) -> str | None:
    """The file `path` as committed at `rev`, None when it is not there."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


def committed_run_matches(repo: Path, rev: str, overrides: list[str]) -> bool:
    """True when `rev` committed a pipeline run of its conf/ + overrides (see the module docstring)."""
    params, lock = git_show(repo, rev, "params.yaml"), git_show(repo, rev, "dvc.lock")
    if params is None or lock is None or git_show(repo, rev, METRICS_FILE) is None:
        return False
    params = yaml.safe_load(params)
    conf = subprocess.run(["git", "archive", "--format=tar", rev, "conf"], cwd=repo, check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as folder, tarfile.open(fileobj=io.BytesIO(conf)) as archive:
        archive.extractall(folder, filter="data")
        composed = compose_params(overrides, config_dir=Path(folder) / "conf")
    return params == composed and lock_matches_params(yaml.safe_load(lock) or {}, params)


def reproduce_base(repo: Path, rev: str, overrides: list[str]) -> str:
    """Run `rev` with the overrides in a temporary worktree sharing the DVC cache, commit the run; its sha."""
    cache = Path(repo, run(["dvc", "cache", "dir"], repo).strip()).resolve()
    with tempfile.TemporaryDirectory(prefix="neft-base-") as folder:
        tree = Path(folder) / "base"
        run(["git", "worktree", "add", "--quiet", "--detach", str(tree), rev], repo)
        try:
            run(["dvc", "cache", "dir", "--local", str(cache)], tree)
            write_params(tree, overrides)
            # The base's stages import the base's own library, whatever PYTHONPATH this script was given.
            run(["dvc", "repro"], tree, capture=False, env={"PYTHONPATH": str(tree)})
            run(["git", "add", "--all"], tree)
            run(["git", "-c", "user.name=neft ci", "-c", "user.email=ci@neft.invalid", "-c", "commit.gpgsign=false",
                 "commit", "--quiet", "--no-verify", "--allow-empty", "-m", f"CI run of {rev} with {' '.join(overrides)}"], tree)
            return run(["git", "rev-parse", "HEAD"], tree).strip()
        finally:
            run(["git", "worktree", "remove", "--force", str(tree)], repo)


def base_run(repo: Path, base_sha: str, overrides: list[str]) -> str:
    """The commit holding the base's run of this configuration: the base itself, or its reproduction."""
    if committed_run_matches(repo, base_sha, overrides):
        print(f"== Base {base_sha[:12]} committed a run of this configuration: comparing with it")
        return base_sha
    print(f"== Base {base_sha[:12]} has no committed run of this configuration: "
          "reproducing it in a git worktree that shares the DVC cache")
    run_sha = reproduce_base(repo, base_sha, overrides)
    print(f"== Base run committed as {run_sha[:12]} (a throwaway commit on no branch)")
    return run_sha


def lock_outputs(lock: dict[str, Any]) -> list[str]:
    """Every output path dvc.lock records."""
    return sorted({out["path"] for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])})


def start_from_run(repo: Path, run_sha: str) -> None:
    """Put the run committed at `run_sha` in the workspace: from git its dvc.lock, the outputs git
    tracks and the .gitignore files DVC keeps beside outputs; the cached outputs from the DVC cache
    (missing ones stay missing, and their stages stale)."""
    outputs = lock_outputs(yaml.safe_load(git_show(repo, run_sha, "dvc.lock")))
    ignores = {posixpath.join(posixpath.dirname(path), ".gitignore") for path in outputs}
    committed = [path for path in sorted({*outputs, *ignores}) if git_show(repo, run_sha, path) is not None]
    for path in map(repo.joinpath, committed):  # no leftovers from the workspace's own run in an output folder
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    run(["git", "restore", f"--source={run_sha}", "--worktree", "--", "dvc.lock", *committed], repo)
    run(["dvc", "checkout", "--quiet", "--allow-missing"], repo)


def stale_stages(status: dict[str, Any]) -> list[str]:
    """Stage names in `dvc status --json` output ({} when everything is up to date)."""
    return list(status)


def table_or(markdown: str, empty: str) -> str:
    """A `dvc ... diff --md` table, or `empty` when it has no rows (just the header and the rule)."""
    lines = markdown.strip().splitlines()
    return "\n".join(lines) if len(lines) > 2 else empty


def markdown_summary(against: str, overrides: list[str], stale: list[str], params_diff: str, metrics_diff: str) -> str:
    return "\n".join([
        f"## Pipeline (`{' '.join(overrides)}`) against base {against}",
        "",
        f"Stale stages, rerun with what they feed: {', '.join(f'`{stage}`' for stage in stale) or 'none'}",
        "",
        "### Parameters",
        "",
        table_or(params_diff, "No parameter changed."),
        "",
        "### Metrics",
        "",
        table_or(metrics_diff, "No metric changed."),
        "",
    ])


def ci_pipeline(repo: Path, base: str, overrides: list[str]) -> str:
    """Steps 1-6 of the module docstring; the Markdown summary."""
    write_params(repo, overrides)
    print(f"== params.yaml: conf/ + {' '.join(overrides)}")
    base_sha = run(["git", "rev-parse", "--verify", f"{base}^{{commit}}"], repo).strip()
    run_sha = base_run(repo, base_sha, overrides)
    start_from_run(repo, run_sha)
    stale = stale_stages(json.loads(run(["dvc", "status", "--json"], repo) or "{}"))
    print(f"== Stale stages: {', '.join(stale) or 'none'}")
    if stale:
        run(["dvc", "repro", "--downstream", *stale], repo, capture=False)
    params_diff = run(["dvc", "params", "diff", run_sha[:12], "--md"], repo)
    metrics_diff = run(["dvc", "metrics", "diff", run_sha[:12], "--md"], repo)
    against = f"`{base}` ({base_sha[:12]}" + (")" if run_sha == base_sha else f", reproduced as {run_sha[:12]})")
    return markdown_summary(against, overrides, stale, params_diff, metrics_diff)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = args.override or CI_OVERRIDES
    # dvc and the stages' `python` come from this interpreter's environment (.venv), activated or not.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    use_offline_environment()
    try:
        summary = ci_pipeline(ROOT, args.base, overrides)
    except subprocess.CalledProcessError as error:
        print(f"error: `{' '.join(map(str, error.cmd))}` failed with exit status {error.returncode}", file=sys.stderr)
        return error.returncode or 1
    except ConfigError as error:
        print(f"error: cannot compose conf/ with {' '.join(overrides)}: {error}", file=sys.stderr)
        return 1
    print(summary)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as file:
            file.write(summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
