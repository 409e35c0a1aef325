"""Shared fixtures: a tiny random-init Llama (2 layers, small dims) and masks for it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from neft import OFFLINE_ENVIRONMENT, use_offline_environment

use_offline_environment()  # before anything imports huggingface_hub, which reads it once

from neft.config import Config, compose_config  # noqa: E402
from neft.masks import ModelShape, NeuronMask  # noqa: E402
from neft.models import build_random_model, byte_level_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY_ARCHITECTURE = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


@pytest.fixture
def tokenizer():
    return byte_level_tokenizer()


# Gemma 3 differs from Llama around the MLP (GELU-tanh, (1 + w) norms before and after it, q/k
# norms, scaled embeddings) but not in the matrices that hold NeFT's neurons.
TINY_GEMMA3_ARCHITECTURE = {**TINY_ARCHITECTURE, "model_type": "gemma3_text", "head_dim": 8, "sliding_window": 16}


@pytest.fixture(params=["llama", "gemma3"])
def tiny_model(request, tokenizer):
    """Every test that takes the tiny model runs on a random-init Llama and a random-init Gemma 3."""
    architecture = {"llama": TINY_ARCHITECTURE, "gemma3": TINY_GEMMA3_ARCHITECTURE}[request.param]
    return build_random_model(architecture, vocab_size=len(tokenizer), seed=0)


def random_mask(model: torch.nn.Module, per_matrix: int, seed: int = 0) -> NeuronMask:
    """A mask with `per_matrix` random neurons in each (kind, layer)."""
    shape = ModelShape.of(model)
    generator = torch.Generator().manual_seed(seed)
    indices = {
        kind: {layer: sorted(torch.randperm(shape.d_ff, generator=generator)[:per_matrix].tolist()) for layer in range(shape.num_layers)}
        for kind in ("in", "out")
    }
    return NeuronMask(shape=shape, ratio=per_matrix * 2 * shape.num_layers * shape.d_model / shape.total_parameters, indices=indices)


def random_batch(vocab_size: int, batch: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}


# --- every stage in-process on the tiny model, in a temporary project directory -------------------

TINY = ["model=tiny-llama", "task=jsonl"]


def run_name_of(name: str) -> str:
    """The training run a stage writes on the tiny configuration: the probe, or a method at the one
    rate of its grid (neft.artifacts.candidate_run)."""
    from neft.artifacts import candidate_run

    return "probe" if name == "probe" else candidate_run(name, getattr(compose_config(TINY).methods, name).learning_rates[0])


@contextlib.contextmanager
def inside(directory: Path):
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield directory
    finally:
        os.chdir(previous)


class RecordedConfig:
    """A Config that notes the key path of every value a stage reads into `reads`."""

    def __init__(self, section: object, reads: set[str], path: str = ""):
        self._section, self._reads, self._path = section, reads, path

    def __getattr__(self, name: str):
        value = getattr(self._section, name)
        key = f"{self._path}.{name}" if self._path else name
        if dataclasses.is_dataclass(value):
            return RecordedConfig(value, self._reads, key)
        self._reads.add(key)
        return value


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> tuple[Path, Config, dict[str, set[str]]]:
    """A project directory after every stage ran once, in-process and in dvc.yaml's order, its
    config, and the params keys each dvc.yaml stage read (tests/test_stages.py, tests/test_resume.py).
    Tests may rerun stages in it only in ways that leave the same bytes behind."""
    from stages.analyze import analyze
    from stages.evaluate import evaluate
    from stages.export import export
    from stages.mask import mask
    from stages.prepare_data import prepare_data
    from stages.prepare_model import prepare_model
    from stages.report import report
    from stages.score import score
    from stages.select import select
    from stages.train import train

    directory = tmp_path_factory.mktemp("stages")
    shutil.copytree(ROOT / "data/custom", directory / "data/custom")
    config = compose_config(TINY)
    reads: dict[str, set[str]] = {}

    def recorded(stage: str) -> Config:
        return RecordedConfig(config, reads.setdefault(stage, set()))

    with inside(directory):
        prepare_data(recorded("prepare_data"))
        prepare_model(recorded("prepare_model"))
        train("probe", recorded("probe"))
        score(recorded("score"))
        mask(recorded("mask"))
        for method in ("full", "neft", "lora"):  # the tiny model's grids have one rate each, passed as dvc.yaml does
            train(method, str(getattr(config.methods, method).learning_rates[0]), recorded(f"train_{method}"))
        select(recorded("select"))
        evaluate("base", recorded("evaluate_base"))
        for method in ("full", "neft", "lora"):
            evaluate(method, recorded(f"evaluate@{method}"))
        for method in ("full", "neft", "lora"):
            export(method, recorded(f"export@{method}"))
        analyze(recorded("analyze"))
        report(recorded("report"))
    return directory, config, reads


# --- the project in a temporary git repository (end-to-end and CI tests) ------------------------


def command_environment(cwd: Path, **env: str) -> dict[str, str]:
    """A command's environment: offline, this Python's tools first on PATH."""
    inherited = {name: value for name, value in os.environ.items() if name != "GITHUB_STEP_SUMMARY"}
    # PYTHONPATH: a script run in `cwd` imports that project's `neft`, not the editable install's.
    # PYTHONFAULTHANDLER: a process that aborts (a torchrun rank, SIGABRT) prints every thread's Python stack.
    return {**inherited, **OFFLINE_ENVIRONMENT, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(cwd), "PYTHONFAULTHANDLER": "1", **env}


def run(command: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a command with this Python's tools first on PATH; raise with its output if it fails."""
    result = subprocess.run(command, cwd=cwd, env=command_environment(cwd, **env), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


@pytest.fixture(scope="session")
def committed_tiny_run(tmp_path_factory, worker_id) -> tuple[Path, str, str]:
    """The suite's one full run of the tiny pipeline, which both end-to-end modules copy
    (`copy_repository`): a git+DVC copy of the project whose first commit has no pipeline run, then
    `scripts/ci_pipeline.py --base HEAD` on it (it reproduces HEAD in a worktree for the
    `model=tiny-llama task=jsonl` params and checks out that run), committed. Returns the
    repository, the script's output and the commit of the run.

    Made once per test run, whatever the number of pytest-xdist workers: the first worker to need
    it builds it under their shared temporary directory while the others wait on a file lock.
    Nobody changes it afterwards; tests work on copies."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    made = shared / "neft-tiny-run.json"
    with FileLock(f"{made}.lock"):
        if not made.is_file():
            repo = shared / "neft-tiny-run"
            repo.mkdir()
            copy_project_into_new_repo(repo, ("reports/", "artifacts/", "data/prepared"))
            commit(repo, "project, params.yaml for the default config")
            output = run([sys.executable, "scripts/ci_pipeline.py", "--base", "HEAD"], repo).stdout
            commit(repo, "tiny run")
            made.write_text(json.dumps([str(repo), output, run(["git", "rev-parse", "HEAD"], repo).stdout.strip()]))
    repo, output, tiny_run_commit = json.loads(made.read_text())
    return Path(repo), output, tiny_run_commit


def copy_repository(source: Path, destination: Path) -> Path:
    """A private copy of a git+DVC repository, cache included; DVC's state database is left out
    (it is keyed by the original files' inodes)."""
    shutil.copytree(source, destination, symlinks=True, ignore=lambda folder, names: ["tmp"] if Path(folder) == source / ".dvc" else [])
    return destination


def copy_project_into_new_repo(repo: Path, skip_prefixes: tuple[str, ...]) -> Path:
    """Copy the project's files (tracked and untracked, not ignored; not dvc.lock nor those under
    `skip_prefixes`) into `repo` and make it a git repository with nothing committed yet."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout.split()
    for name in files:
        if name.startswith(skip_prefixes) or name == "dvc.lock" or not (ROOT / name).is_file():
            continue
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@neft.local"], repo)
    run(["git", "config", "user.name", "neft test"], repo)
    return repo
