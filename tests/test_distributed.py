"""Several processes (torchrun, gloo on CPU) give what one process gives with the same global batch:
the same step losses and the same saved weights, delta or adapter within float32 noise, and the
same prediction bytes. Each strategy is one real `torchrun` launch of 2 processes that runs every
case's stage function in turn (launches dominate the cost); one more case runs the stage command
itself, `python -m stages.train RUN` with `runtime.processes=2`, which relaunches under torchrun
as `dvc repro` would."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, command_environment, inside, run, run_name_of
from safetensors.torch import load_file

from neft.artifacts import eval_dir, train_log_dir, weights_dir
from neft.config import ConfigError, compose_params, parse_config
from neft.distributed import Ranks, process_group
from stages.evaluate import evaluate
from stages.train import train

ROOT = Path(__file__).resolve().parents[1]


WEIGHTS = {"probe": "model.safetensors", "full": "model.safetensors", "neft": "neft_delta.safetensors",
           "lora": "adapter_model.safetensors"}
CASES = {  # case: (training run, overrides)
    "full": ("full", []), "neft": ("neft", []), "lora": ("lora", []),
    # NeFT's custom autograd function, recomputed by non-reentrant checkpointing
    "neft-checkpointing": ("neft", ["train.gradient_checkpointing=true"]),
    # two forward/backward passes per rank and batch, DDP reducing after the second only
    "lora-accumulation": ("lora", ["train.gradient_accumulation=2"]),
    "gradient-probe": ("probe", ["probe.kind=gradient"]),  # no optimizer: the summed gradient itself must match
}
# Before any case retrains NeFT, so that both sides generate with the workspace's same NeFT delta.
EVALUATE_FIRST = {"evaluate": ("evaluate", [])}
SHARDED_CASES = ("full", "neft", "lora")  # the gradient probe saves gradients, which FSDP shards

# Runs in each of the torchrun processes: every case's stage function, then rank 0 keeps its outputs.
CASES_UNDER_TORCHRUN = """
import json, shutil, sys
from pathlib import Path
import torch
from neft.artifacts import candidate_run, train_log_dir, weights_dir
from neft.config import compose_params, parse_config
from neft.distributed import Ranks, process_group
from stages.evaluate import evaluate
from stages.train import train
cases, tiny, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
ranks = Ranks.from_environment()
with process_group(ranks, torch.device("cpu")):  # once for all cases: the stage functions join it rather than their own
    for case, (name, overrides) in cases.items():
        config = parse_config(compose_params([*tiny, "runtime.processes=2", *overrides]))
        evaluate("neft", config) if name == "evaluate" else train(name, config)
        if ranks.is_main:
            if name == "evaluate":
                outputs = ["reports/eval/neft"]
            else:
                run = "probe" if name == "probe" else candidate_run(name, getattr(config.methods, name).learning_rates[0])
                outputs = [str(train_log_dir(run)), str(weights_dir(run))]
            for written in outputs:
                shutil.copytree(written, out / case / written)
"""


def outputs(directory: Path, name: str) -> tuple[list[float], dict[str, torch.Tensor], dict]:
    run = run_name_of(name)
    losses = pd.read_csv(directory / train_log_dir(run) / "plots/metrics/loss.tsv", sep="\t")["loss"].tolist()
    summary = json.loads((directory / train_log_dir(run) / "summary.json").read_text())
    return losses, load_file(directory / weights_dir(run) / WEIGHTS[name]), summary


def predictions_and_metrics(directory: Path) -> tuple[bytes, dict]:
    metrics = json.loads((directory / eval_dir("neft") / "metrics.json").read_text())
    metrics.pop("generate_seconds")
    return (directory / eval_dir("neft") / "predictions.jsonl").read_bytes(), metrics


def fresh_workspace(project, tmp_path_factory) -> Path:
    """A copy of the session's stage project: each launch starts from the same NeFT delta."""
    directory = tmp_path_factory.mktemp("distributed") / "project"
    shutil.copytree(project[0], directory)
    return directory


@pytest.fixture(scope="module")
def one_process(project, tmp_path_factory) -> Path:
    """Every case in this process: the reference."""
    out = tmp_path_factory.mktemp("one-process")
    with inside(fresh_workspace(project, tmp_path_factory)):
        for case, (name, overrides) in {**EVALUATE_FIRST, **CASES}.items():
            config = parse_config(compose_params([*TINY, *(o for o in overrides if not o.startswith("train."))]))
            if name == "evaluate":
                evaluate("neft", config)
                shutil.copytree(eval_dir("neft"), out / case / eval_dir("neft"))
            else:
                train(name, config)
                for written in (train_log_dir(run_name_of(name)), weights_dir(run_name_of(name))):
                    shutil.copytree(written, out / case / written)
    return out


def under_torchrun(workspace: Path, out: Path, cases: dict[str, tuple[str, list[str]]]) -> Path:
    script = out / "cases.py"
    script.write_text(CASES_UNDER_TORCHRUN)
    run(["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
         json.dumps(cases), json.dumps(TINY), str(out)], workspace, PYTHONPATH=str(ROOT))
    return out


@pytest.fixture(scope="module")
def ddp(project, tmp_path_factory) -> Path:
    return under_torchrun(fresh_workspace(project, tmp_path_factory), tmp_path_factory.mktemp("ddp"), {**EVALUATE_FIRST, **CASES})


@pytest.fixture(scope="module")
def fsdp(project, tmp_path_factory) -> Path:
    cases = {case: (CASES[case][0], [*CASES[case][1], "runtime.strategy=fsdp"]) for case in SHARDED_CASES}
    return under_torchrun(fresh_workspace(project, tmp_path_factory), tmp_path_factory.mktemp("fsdp"), cases)


def assert_trained_alike(one: Path, two: Path, name: str, strategy: str) -> None:
    one_losses, one_weights, one_summary = outputs(one, name)
    two_losses, two_weights, two_summary = outputs(two, name)
    # Each rank's loss is rescaled so that the averaged gradient is the global batch's token mean;
    # what remains is float32 summation order.
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    assert two_weights.keys() == one_weights.keys()
    for key, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[key], tensor, rtol=1e-4, atol=1e-6, msg=key)
    assert (one_summary["processes"], two_summary["processes"], two_summary["strategy"]) == (1, 2, strategy)
    assert two_summary["train_tokens"] == one_summary["train_tokens"], "tokens of the global batches"
    assert two_summary["best_step"] == one_summary["best_step"]
    if name == "full":  # under FSDP a rank keeps AdamW moments for its half of the weights only
        share = 2 if strategy == "fsdp" else 1
        assert two_summary["optimizer_state_mb"] == pytest.approx(one_summary["optimizer_state_mb"] / share, abs=0.1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ddp_trains_what_one_process_trains(one_process, ddp, case):
    assert_trained_alike(one_process / case, ddp / case, CASES[case][0], "ddp")


@pytest.mark.parametrize("case", SHARDED_CASES)
def test_fsdp_trains_what_one_process_trains(one_process, fsdp, case):
    assert_trained_alike(one_process / case, fsdp / case, CASES[case][0], "fsdp")


def test_two_processes_evaluate_what_one_process_evaluates(one_process, ddp):
    """The ranks generate alternate batches of the same length-sorted batching and gather the
    predictions in input order: the same bytes as one process, metrics included."""
    one, two = predictions_and_metrics(one_process / "evaluate"), predictions_and_metrics(ddp / "evaluate")
    assert two == one
    assert -(-one[1]["test_examples"] // compose_params(TINY)["evaluate"]["batch_size"]) >= 2, "both ranks generate"


def test_the_stage_command_relaunches_itself_under_torchrun(one_process, project, tmp_path):
    directory = tmp_path / "project"
    shutil.copytree(project[0], directory)
    (directory / "params.yaml").write_text(yaml.safe_dump(compose_params([*TINY, "runtime.processes=2"])))
    printed = run(["python", "-m", "stages.train", "neft"], directory, PYTHONPATH=str(ROOT)).stdout
    assert '"processes": 2' in printed, "the summary rank 0 wrote, printed by the launching process"
    assert_trained_alike(one_process / "neft", directory, "neft", "ddp")


def test_a_user_error_in_the_ranks_is_one_line_and_exit_2(project, tmp_path):
    """An error only the ranks can find (here, prepared data edited by hand) is printed once by the
    launching process, not by every rank inside torchrun's failure report, and nothing is written."""
    directory = tmp_path / "project"
    shutil.copytree(project[0], directory)
    (directory / "params.yaml").write_text(yaml.safe_dump(compose_params([*TINY, "runtime.processes=2"])))
    with (directory / "data/prepared/train.jsonl").open("a") as data:
        data.write("not json\n")
    weights = directory / weights_dir(run_name_of("neft"))
    before = {path: path.read_bytes() for path in weights.iterdir()}
    result = run(["python", "-m", "stages.train", "neft"], directory, check=False, PYTHONPATH=str(ROOT))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "train.jsonl" in errors[0] and "not valid JSON" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr
    assert {path: path.read_bytes() for path in weights.iterdir()} == before


def test_two_nodes_train_what_one_process_trains(one_process, project, tmp_path):
    """Two machines of one process each, played by two copies of the project on this one that meet
    at a localhost rendezvous, each running the stage command as its node would: node 0's result
    equals one process's, and node 1 writes nothing."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    directories = []
    for node in (0, 1):
        directory = tmp_path / f"node{node}"
        shutil.copytree(project[0], directory)
        overrides = [*TINY, "runtime.nodes=2", f"runtime.node_rank={node}", f"runtime.rendezvous=localhost:{port}"]
        (directory / "params.yaml").write_text(yaml.safe_dump(compose_params(overrides)))
        directories.append(directory)
    untouched = (directories[1] / train_log_dir(run_name_of("neft")) / "summary.json").read_bytes()
    nodes = [subprocess.Popen(["python", "-m", "stages.train", "neft"], cwd=directory, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=command_environment(directory, PYTHONPATH=str(ROOT)))
             for directory in directories]
    printed = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], printed
    assert '"processes": 2' in printed[0] and '"node_rank": 1' in printed[1]
    assert_trained_alike(one_process / "neft", directories[0], "neft", "ddp")
    assert (directories[1] / train_log_dir(run_name_of("neft")) / "summary.json").read_bytes() == untouched


def test_several_nodes_need_a_rendezvous_and_a_node_rank_below_their_count():
    with pytest.raises(ConfigError, match=r"runtime.rendezvous is missing: runtime.nodes = 2 needs node 0's host:port"):
        parse_config(compose_params([*TINY, "runtime.nodes=2"]))
    with pytest.raises(ConfigError, match=r"runtime.node_rank = 2: must be below runtime.nodes \(2\)"):
        parse_config(compose_params([*TINY, "runtime.nodes=2", "runtime.node_rank=2", "runtime.rendezvous=localhost:29500"]))
    with pytest.raises(ConfigError, match=r"train.batch_size = 4: must be a multiple of runtime.processes \(2\) x runtime.nodes \(4\)"):
        parse_config(compose_params([*TINY, "runtime.processes=2", "runtime.nodes=4", "runtime.rendezvous=localhost:29500"]))


def test_a_rank_takes_an_equal_contiguous_share_of_every_batch():
    batch = {"input_ids": torch.arange(24).reshape(8, 3), "labels": torch.arange(24).reshape(8, 3)}
    shares = [Ranks(rank, 4, rank).shard(batch) for rank in range(4)]
    assert all(share["input_ids"].shape == (2, 3) for share in shares)
    assert torch.equal(torch.cat([share["input_ids"] for share in shares]), batch["input_ids"])
    assert Ranks().shard(batch) is batch


# Each rank writes its own file: two processes printing to one pipe can interleave their lines.
SUM_OVER_TWO_RANKS = """
import json
from pathlib import Path
import torch
from neft.distributed import Ranks, process_group
ranks = Ranks.from_environment()
with process_group(ranks, torch.device("cpu")):
    totals = ranks.sum_over_ranks([ranks.rank + 0.5, 10.0 ** ranks.rank])
Path(f"rank{ranks.rank}.json").write_text(json.dumps({"rank": ranks.rank, "totals": totals}))
"""


def test_every_rank_gets_the_sum_over_the_ranks_and_one_process_does_not_communicate(tmp_path, monkeypatch):
    script = tmp_path / "sum.py"
    script.write_text(SUM_OVER_TWO_RANKS)
    run(["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)], tmp_path, PYTHONPATH=str(ROOT))
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    # rank 0 holds [0.5, 1], rank 1 holds [1.5, 10]
    assert results == [{"rank": 0, "totals": [2.0, 11.0]}, {"rank": 1, "totals": [2.0, 11.0]}]

    def no_communication(*args, **kwargs):
        raise AssertionError("one process must not all-reduce")

    monkeypatch.setattr(torch.distributed, "all_reduce", no_communication)
    assert Ranks().sum_over_ranks([2.5, 3.0]) == [2.5, 3.0]


def test_a_batch_that_the_processes_cannot_share_equally_is_refused():
    message = (r"train.batch_size = 4: must be a multiple of runtime.processes \(3\) x runtime.nodes \(1\) "
               r"x train.gradient_accumulation \(1\)")
    with pytest.raises(ConfigError, match=message):
        parse_config(compose_params([*TINY, "runtime.processes=3"]))


def test_the_gradient_probe_under_fsdp_is_refused():
    with pytest.raises(ConfigError, match="probe.kind = 'gradient' with runtime.strategy = 'fsdp'"):
        parse_config(compose_params([*TINY, "runtime.processes=2", "runtime.strategy=fsdp", "probe.kind=gradient"]))


@pytest.fixture
def group_calls(monkeypatch) -> list[str]:
    """The process-group calls `process_group` makes, recorded instead of made."""
    calls: list[str] = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(torch.distributed, name, lambda *args, name=name, **kwargs: calls.append(name))
    return calls


def test_a_rank_leaves_the_group_after_a_barrier_so_none_races_to_shutdown(group_calls):
    with process_group(Ranks(1, 2, 1), torch.device("cpu")):
        group_calls.append("work")
    assert group_calls == ["init_process_group", "work", "barrier", "destroy_process_group"]


def test_a_failing_rank_leaves_the_group_without_waiting_for_the_others(group_calls):
    with pytest.raises(RuntimeError, match="boom"), process_group(Ranks(1, 2, 1), torch.device("cpu")):
        raise RuntimeError("boom")
    assert group_calls == ["init_process_group", "destroy_process_group"]
