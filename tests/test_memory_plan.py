"""The memory plan: parameter, gradient and optimizer bytes equal the tensors training makes (one
process, and FSDP2's rank 0 in a real 2-process launch); activations are within 20 % of the peak
one step measures, on the tiny models and at SmolLM2's shape; a plan that does not fit is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_ARCHITECTURE, TINY_GEMMA3_ARCHITECTURE, run
from transformers import AutoConfig, AutoModelForCausalLM

from neft.config import PROBE_KINDS, compose_config
from neft.errors import ConfigError
from neft.measure import TensorLifetimes, gradient_bytes, optimizer_state_bytes, tensor_bytes
from neft.memory_plan import (
    SHAPES,
    MethodSpec,
    PlanRow,
    Workload,
    activation_peak_bytes,
    calibration_batch,
    meta_model,
    model_architecture,
    plan,
    plan_config,
    render,
    require_fits,
    set_up,
    state_bytes,
)
from neft.methods import PROBE_SETUPS
from neft.models import byte_level_tokenizer
from neft.training import causal_lm_loss

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = len(byte_level_tokenizer())
SMOLLM2_SHAPE = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                 "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
SHAPES_UNDER_TEST = {"llama": TINY_ARCHITECTURE, "gemma3": TINY_GEMMA3_ARCHITECTURE, "smollm2": SMOLLM2_SHAPE}
METHODS = ("full", "neft", "lora")
PROBES = ("probe_matrices", "probe_lora", "probe_gradient")
# Every set-up on the tiny models; the three methods at SmolLM2's shape (135M parameters: slower).
EXACT_CASES = [(shape, setup) for shape in ("llama", "gemma3") for setup in METHODS + PROBES] + [("smollm2", s) for s in METHODS]
ACTIVATION_TOLERANCE = 0.2  # the bound on planned vs measured activations


def architecture(shape: str) -> AutoConfig:
    fields = dict(SHAPES_UNDER_TEST[shape])
    return AutoConfig.for_model(fields.pop("model_type", "llama"), **{"vocab_size": VOCABULARY, **fields})


def set_up_for_real(config: AutoConfig, spec: MethodSpec, checkpointing: bool = False) -> tuple[torch.nn.Module, list]:
    """A real CPU model set up as the plan sets up its meta copy (the same even mask, the same rank)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, parameters = set_up(model, spec)
    model.train()
    return model, parameters


@pytest.mark.parametrize(("shape", "setup"), EXACT_CASES)
def test_parameter_gradient_and_optimizer_bytes_are_exact(shape, setup):
    config, spec = architecture(shape), MethodSpec(setup, ratio=0.06)
    planned_model, planned_parameters = set_up(meta_model(config, torch.float32), spec)
    planned = state_bytes(planned_model, planned_parameters, "none", 1, optimizer=setup != "probe_gradient")
    model, parameters = set_up_for_real(config, spec)
    causal_lm_loss(model, calibration_batch(2, 16, 8, config.vocab_size), None).backward()
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    if setup != "probe_gradient":  # the gradient probe keeps its gradients and has no optimizer
        optimizer.step()
    assert planned["parameter_bytes"] == tensor_bytes(model.parameters())
    assert planned["gradient_bytes"] == gradient_bytes(parameters)
    assert planned["optimizer_bytes"] == optimizer_state_bytes(optimizer)
    assert planned["gathered_bytes"] == 0


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize(("shape", "setup", "autocast"), [
    *[("llama", setup, None) for setup in (*METHODS, "probe_matrices")],
    ("gemma3", "neft", None),
    *[("smollm2", setup, torch.bfloat16) for setup in METHODS],  # the default's shape and bf16 autocast
])
def test_planned_activations_are_within_20_percent_of_the_measured_peak(shape, setup, autocast, checkpointing):
    config, spec = architecture(shape), MethodSpec(setup, ratio=0.06)
    work = Workload(sequences=4, sequence_length=64, labelled_fraction=0.5)
    row = plan(config, [spec], work, torch.float32, autocast, processes=1, checkpointing=(checkpointing,))[0]
    model, parameters = set_up_for_real(config, spec, checkpointing)
    batch = calibration_batch(work.sequences, work.sequence_length, work.sequence_length // 2, config.vocab_size)
    measured = activation_peak_bytes(model, parameters, batch, autocast)
    assert row.activation_bytes == pytest.approx(measured, rel=ACTIVATION_TOLERANCE)


FSDP_RANK_ZERO = """
import json, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from neft.distributed import Ranks, process_group, wrap_for_training
from neft.measure import gradient_bytes, optimizer_state_bytes, tensor_bytes
from neft.memory_plan import MethodSpec, calibration_batch, set_up
from neft.training import causal_lm_loss
fields, setups, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
ranks, measured = Ranks.from_environment(), {}
with process_group(ranks, torch.device("cpu")):
    for setup in setups:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **fields))
        model, parameters = set_up(model, MethodSpec(setup, ratio=0.06))
        model, parameters = wrap_for_training(model, parameters, ranks, torch.device("cpu"), "fsdp")
        causal_lm_loss(model, calibration_batch(2, 16, 8, fields["vocab_size"]), None).backward()
        optimizer = torch.optim.AdamW(parameters, lr=1e-3)
        optimizer.step()
        measured[setup] = [tensor_bytes(model.parameters()), gradient_bytes(parameters), optimizer_state_bytes(optimizer)]
    if ranks.is_main:
        open(out, "w").write(json.dumps(measured))
"""


def test_fsdp_figures_are_rank_zeros_shards(tmp_path):
    """Two real FSDP2 processes (gloo): rank 0's sharded parameters, gradients and AdamW state are
    what the plan says, for each method."""
    fields = {**TINY_ARCHITECTURE, "vocab_size": VOCABULARY}
    script, out = tmp_path / "fsdp_bytes.py", tmp_path / "measured.json"
    script.write_text(FSDP_RANK_ZERO)
    run(["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), json.dumps(fields),
         json.dumps(list(METHODS)), str(out)], tmp_path, PYTHONPATH=str(ROOT))
    measured = json.loads(out.read_text())
    config = architecture("llama")
    for setup in METHODS:
        model, parameters = set_up(meta_model(config, torch.float32), MethodSpec(setup, ratio=0.06))
        planned = state_bytes(model, parameters, "fsdp", 2)
        assert [planned["parameter_bytes"], planned["gradient_bytes"], planned["optimizer_bytes"]] == measured[setup], setup
        assert planned["gathered_bytes"] > 0


def test_a_7b_plan_counts_llama_2_7b_exactly_and_shards_it_over_8_processes():
    config = AutoConfig.for_model(**SHAPES["llama2-7b"])
    model, parameters = set_up(meta_model(config, torch.bfloat16), MethodSpec("full"))
    one, eight = state_bytes(model, parameters, "none", 1), state_bytes(model, parameters, "fsdp", 8)
    assert one["parameter_bytes"] == 2 * 6_738_415_616  # Llama-2-7B's published parameter count, bf16
    assert eight["parameter_bytes"] == one["parameter_bytes"] // 8  # every dim 0 divides by 8


def test_the_plan_of_the_composed_config_has_every_run_and_strategy():
    config = compose_config([*TINY, "runtime.processes=2"])
    rows = plan_config(config, model_architecture(config.model), strategies=("ddp", "fsdp"), checkpointing=(False,))
    expected = {(setup, strategy) for setup in ("probe", *METHODS) for strategy in ("ddp", "fsdp")}
    assert {(row.method, row.strategy) for row in rows} == expected
    by_key = {(row.method, row.strategy): row for row in rows}
    assert by_key["full", "fsdp"].parameter_bytes < by_key["full", "ddp"].parameter_bytes
    assert by_key["neft", "ddp"].optimizer_bytes < by_key["full", "ddp"].optimizer_bytes / 5


def test_a_run_that_does_not_fit_is_refused_with_the_plan():
    row = PlanRow("full", "none", 1, False, 2 * 2**30, 2**30, 2**30, 0, 2**30)
    require_fits(row, row.total_bytes, "train@full")
    with pytest.raises(ConfigError, match=r"train@full: the memory plan needs 5.0 GiB per process but the GPU has 4.0 GiB") as error:
        require_fits(row, 4 * 2**30, "train@full")
    assert "runtime.strategy=fsdp" in str(error.value) and "| full | none | 1 | no |" in str(error.value)
    assert "**no**" in render([row], 4 * 2**30)


def test_tensor_lifetimes_give_the_peak_of_what_was_alive_together():
    with TensorLifetimes() as lifetimes:
        first = torch.zeros(1000)  # 4000 bytes
        second = torch.zeros(500)  # 2000 bytes, alive with the first
        del first
        third = torch.zeros(250)  # 1000 bytes, after the first was freed
    assert lifetimes.peak_bytes() == 6000
    assert lifetimes.peak_bytes(excluding=[lifetimes.key(second)]) == 4000
    assert lifetimes.key(third) is not None and lifetimes.key(torch.zeros(1)) is None


def test_every_probe_kind_has_a_set_up():
    assert tuple(PROBE_SETUPS) == PROBE_KINDS
