"""Several processes (torchrun, DDP, gloo on CPU) give what one process gives with the same global
batch: the same step losses and the same saved weights, delta or adapter, within float32 noise.
The runs are real: `python -m stages.train RUN` with `runtime.processes=2` relaunches itself under
torchrun, exactly as `dvc repro` would run it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, run
from safetensors.torch import load_file

from neft.artifacts import train_log_dir, weights_dir
from neft.config import ConfigError, compose_params, parse_config
from neft.distributed import Ranks

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"probe": "model.safetensors", "full": "model.safetensors", "neft": "neft_delta.safetensors",
           "lora": "adapter_model.safetensors"}


def trained(directory: Path, name: str, processes: int, *overrides: str) -> tuple[list[float], dict[str, torch.Tensor], dict]:
    (directory / "params.yaml").write_text(yaml.safe_dump(compose_params([*TINY, f"runtime.processes={processes}", *overrides])))
    run(["python", "-m", "stages.train", name], directory, PYTHONPATH=str(ROOT))
    losses = pd.read_csv(directory / train_log_dir(name) / "plots/metrics/loss.tsv", sep="\t")["loss"].tolist()
    summary = json.loads((directory / train_log_dir(name) / "summary.json").read_text())
    return losses, load_file(directory / weights_dir(name) / WEIGHTS[name]), summary


@pytest.mark.parametrize(("name", "overrides"), [
    ("full", []), ("neft", []), ("lora", []),
    # NeFT's custom autograd function, recomputed by non-reentrant checkpointing under DDP
    ("neft", ["train.gradient_checkpointing=true"]),
    ("probe", ["probe.kind=gradient"]),  # no optimizer: the summed gradient itself must match
    # FSDP2: every weight sharded over the two processes, the result gathered to rank 0 to save
    ("full", ["runtime.strategy=fsdp"]), ("neft", ["runtime.strategy=fsdp"]), ("lora", ["runtime.strategy=fsdp"]),
])
def test_two_processes_train_what_one_process_trains(project, tmp_path, name, overrides):
    directory = tmp_path / "project"
    shutil.copytree(project[0], directory)
    one_losses, one_weights, one_summary = trained(directory, name, 1, *(o for o in overrides if o.startswith("probe.")))
    two_losses, two_weights, two_summary = trained(directory, name, 2, *overrides)
    # Each rank's loss is rescaled so that DDP's average is the global batch's token mean; what
    # remains is float32 summation order.
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    assert two_weights.keys() == one_weights.keys()
    for key, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[key], tensor, rtol=1e-4, atol=1e-6, msg=key)
    assert (one_summary["processes"], two_summary["processes"]) == (1, 2)
    sharded = "runtime.strategy=fsdp" in overrides
    assert two_summary["strategy"] == ("fsdp" if sharded else "ddp")
    if name == "full":  # FSDP's rank keeps AdamW moments for its half of the weights only
        assert two_summary["optimizer_state_mb"] == pytest.approx(one_summary["optimizer_state_mb"] / (2 if sharded else 1), abs=0.1)
    assert two_summary["train_tokens"] == one_summary["train_tokens"], "tokens of the global batches"
    assert two_summary["best_step"] == one_summary["best_step"]


def test_two_processes_evaluate_what_one_process_evaluates(project, tmp_path):
    """The ranks generate alternate batches of the same length-sorted batching and gather the
    predictions in input order: the same bytes as one process, metrics included."""
    directory = tmp_path / "project"
    shutil.copytree(project[0], directory)
    written = {}
    for processes in (1, 2):
        (directory / "params.yaml").write_text(yaml.safe_dump(compose_params([*TINY, f"runtime.processes={processes}"])))
        run(["python", "-m", "stages.evaluate", "neft"], directory, PYTHONPATH=str(ROOT))
        metrics = json.loads((directory / "reports/eval/neft/metrics.json").read_text())
        metrics.pop("generate_seconds")
        written[processes] = (directory / "reports/eval/neft/predictions.jsonl").read_bytes(), metrics
    assert written[2] == written[1]
    batches = -(-written[1][1]["test_examples"] // compose_params(TINY)["evaluate"]["batch_size"])
    assert batches >= 2, "both ranks generate"


def test_a_rank_takes_an_equal_contiguous_share_of_every_batch():
    batch = {"input_ids": torch.arange(24).reshape(8, 3), "labels": torch.arange(24).reshape(8, 3)}
    shares = [Ranks(rank, 4, rank).shard(batch) for rank in range(4)]
    assert all(share["input_ids"].shape == (2, 3) for share in shares)
    assert torch.equal(torch.cat([share["input_ids"] for share in shares]), batch["input_ids"])
    assert Ranks().shard(batch) is batch


def test_one_process_back_propagates_its_own_loss():
    loss = torch.tensor(2.5, requires_grad=True)
    batch = {"labels": torch.tensor([[1, 2, -100]]), "attention_mask": torch.ones(1, 3)}
    scaled, mean, tokens = Ranks().global_token_mean(loss, batch)
    assert scaled is loss and mean == 2.5 and tokens == 3


def test_a_batch_that_the_processes_cannot_share_equally_is_refused():
    params = compose_params([*TINY, "runtime.processes=3"])
    with pytest.raises(ConfigError, match=r"train.batch_size = 4: must be a multiple of runtime.processes \(3\)"):
        parse_config(params)
