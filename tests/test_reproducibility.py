"""Same seed, same bytes, whatever happens to the process (CPU, fp32, the tiny model):

- stages rerun in a fresh process (another hash seed) write the bytes the first run wrote;
- a training stage killed with SIGKILL resumes from its last checkpoint and ends exactly where an
  uninterrupted run ends: same losses, same saved bytes. The kills are real: the stage runs in a
  subprocess that SIGKILLs itself at the chosen step."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY, inside, run, run_name_of

from neft.artifacts import checkpoint_dir, train_log_dir, weights_dir
from neft.config import Config, compose_params, parse_config
from neft.training import Checkpoints
from stages.train import train

ROOT = Path(__file__).resolve().parents[1]
EVERY = 2  # of the tiny config's 8 steps, validated every 4

# Runs stages.train RUN and SIGKILLs the process when the loop reaches KILL_AT_STEP: "after" its
# checkpoint is on disk, or "during" the checkpoint's write (before the atomic rename).
KILLING_RUN = """
import os, runpy, signal, sys
import neft.training as training
original_save, original_replace = training.Checkpoints.save, os.replace
step, when = int(os.environ["KILL_AT_STEP"]), os.environ["KILL_WHEN"]
def save(self, state):
    if state["step"] == step and when == "during":
        def replace(source, destination):
            os.kill(os.getpid(), signal.SIGKILL)
        training.os.replace = replace
    original_save(self, state)
    if state["step"] == step and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
training.Checkpoints.save = save
sys.argv = ["stages.train", sys.argv[1]]
runpy.run_module("stages.train", run_name="__main__")
"""


def killed_in_subprocess(directory: Path, name: str, kill_at: int, when: str):
    return run(["python", "-c", KILLING_RUN, name], directory, check=False,
               KILL_AT_STEP=str(kill_at), KILL_WHEN=when, PYTHONPATH=str(ROOT))


def outcome(directory: Path, name: str) -> tuple[dict[str, bytes], list[float], dict]:
    run = run_name_of(name)
    saved = {path.name: path.read_bytes() for path in sorted((directory / weights_dir(run)).iterdir())}
    losses = pd.read_csv(directory / train_log_dir(run) / "plots/metrics/loss.tsv", sep="\t")
    summary = json.loads((directory / train_log_dir(run) / "summary.json").read_text())
    return saved, list(zip(losses["step"], losses["loss"], strict=True)), summary


def checkpointing_config(directory: Path, **changes: str) -> Config:
    """params.yaml for the stage subprocesses, and the same config for in-process runs."""
    overrides = [*TINY, f"train.checkpoint_every={EVERY}", *(f"{key}={value}" for key, value in changes.items())]
    params = compose_params(overrides)
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    return parse_config(params)


@pytest.mark.parametrize(("name", "kill_at", "when", "resumes_at"), [
    ("probe", 4, "after", 4),
    ("neft", 6, "after", 6),
    ("lora", 6, "during", 4),  # a torn write leaves the previous checkpoint
])
def test_a_killed_stage_resumes_and_ends_as_an_uninterrupted_run(project, name, kill_at, when, resumes_at):
    directory = project[0]
    config = checkpointing_config(directory)
    with inside(directory):
        train(name, config)  # uninterrupted, in this process
    assert not (directory / checkpoint_dir(run_name_of(name))).exists(), "a finished stage removes its checkpoints"
    uninterrupted = outcome(directory, name)

    killed = killed_in_subprocess(directory, name, kill_at, when)
    assert killed.returncode == -9, killed.stderr
    assert (directory / checkpoint_dir(run_name_of(name)) / "checkpoint.pt").is_file()
    run(["python", "-m", "stages.train", name], directory, PYTHONPATH=str(ROOT))  # `dvc repro` runs this command
    saved, losses, summary = outcome(directory, name)
    assert summary["resumed_from_step"] == resumes_at
    assert saved == uninterrupted[0], "the saved weights, delta or adapter are bit-equal"
    assert losses == uninterrupted[1] and len(losses) == config.probe.steps if name == "probe" else config.train.steps
    assert (summary["first_loss"], summary["final_loss"], summary["best_step"], summary["best_valid_loss"]) == (
        uninterrupted[2]["first_loss"], uninterrupted[2]["final_loss"], uninterrupted[2]["best_step"], uninterrupted[2]["best_valid_loss"])
    assert not (directory / checkpoint_dir(run_name_of(name))).exists()


# Artifacts a seed fixes, by the stage that writes them (timings live apart, in reports/cost.json).
DETERMINED = {
    "score": ["artifacts/scores/scores.parquet"],
    "mask": ["artifacts/mask/mask.json", "artifacts/mask/summary.json"],
    "train('neft'": [f"{weights_dir(run_name_of('neft'))}/{name}" for name in ("neft_delta.safetensors", "neft_config.json")],
    "evaluate('neft'": ["reports/eval/neft/predictions.jsonl"],
    "report(": ["reports/metrics.json", "reports/significance.csv"],
}
RERUN = """
from neft.config import load_config
from stages.evaluate import evaluate
from stages.mask import mask
from stages.report import report
from stages.score import score
from stages.train import train
config = load_config()
score(config); mask(config); train('neft', config); evaluate('neft', config); report(config)
"""


def test_stages_rerun_in_a_fresh_process_write_the_same_bytes(project):
    directory = project[0]
    (directory / "params.yaml").write_text(yaml.safe_dump(compose_params(TINY)))
    paths = [path for written in DETERMINED.values() for path in written]
    assert all(call in RERUN for call in DETERMINED)
    before = {path: (directory / path).read_bytes() for path in paths}
    run(["python", "-c", RERUN], directory, PYTHONPATH=str(ROOT), PYTHONHASHSEED="12345")
    changed = [path for path in paths if (directory / path).read_bytes() != before[path]]
    assert not changed, f"rerun with the same seed in another process changed {changed}"


class Interrupted(Exception):
    pass


def test_a_checkpoint_of_another_configuration_is_not_resumed(project, monkeypatch):
    directory = project[0]
    original = Checkpoints.save

    def save_then_stop(self: Checkpoints, state: dict) -> None:
        original(self, state)
        if state["step"] == 4:
            raise Interrupted

    with inside(directory):
        monkeypatch.setattr(Checkpoints, "save", save_then_stop)
        with pytest.raises(Interrupted):
            train("neft", checkpointing_config(directory))
        monkeypatch.undo()
        # Another rate is another run (its own checkpoint folder); another clipping norm is the same run, changed.
        changed = train("neft", checkpointing_config(directory, **{"train.max_grad_norm": 0.5}))
        assert changed["resumed_from_step"] == 0 and not checkpoint_dir(run_name_of("neft")).exists()
        with pytest.raises(Interrupted):
            monkeypatch.setattr(Checkpoints, "save", save_then_stop)
            train("neft", checkpointing_config(directory))
        monkeypatch.undo()
        assert train("neft", checkpointing_config(directory))["resumed_from_step"] == 4
