"""benchmarks/: bench_training.py runs end to end on the tiny model and writes sane numbers; the
library's NeFT forward it times is the additive function y = base(x) + row and column deltas."""

import json
import math
import subprocess
import sys

import torch
from conftest import ROOT
from torch import nn

import bench_training
from neft.delta import NeuronDeltaLinear

METHODS = bench_training.METHODS


def test_library_forward_gives_the_additive_reference_gradients():
    """The merged-weight autograd function trains the same deltas as the additive form
    y = base(x); y[..., rows] += x @ row_delta^T; y += x[..., columns] @ column_delta^T
    (the original library forward), with a row and a column that cross."""
    torch.manual_seed(0)
    base = nn.Linear(8, 6, bias=True).requires_grad_(False)
    wrapper = NeuronDeltaLinear(base, rows=[1, 4], columns=[0, 4, 7])
    with torch.no_grad():
        wrapper.row_delta.normal_()
        wrapper.column_delta.normal_()
    x = torch.randn(3, 5, 8, requires_grad=True)
    weights = torch.randn(3, 5, 6)
    (wrapper(x) * weights).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    row_delta = wrapper.row_delta.detach().clone().requires_grad_(True)
    column_delta = wrapper.column_delta.detach().clone().requires_grad_(True)
    y = base(x_ref).index_add(-1, wrapper.rows, nn.functional.linear(x_ref, row_delta))
    y = y + nn.functional.linear(x_ref.index_select(-1, wrapper.columns), column_delta)
    (y * weights).sum().backward()

    torch.testing.assert_close(wrapper.row_delta.grad, row_delta.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wrapper.column_delta.grad, column_delta.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_library_forward_with_bias_and_both_axes_matches_the_merged_weight():
    torch.manual_seed(0)
    base = nn.Linear(8, 6, bias=True)
    wrapper = NeuronDeltaLinear(base, rows=[1, 4], columns=[0, 4, 7])
    with torch.no_grad():
        wrapper.row_delta.normal_()
        wrapper.column_delta.normal_()
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(wrapper(x), nn.functional.linear(x, wrapper.merged_weight(), base.bias))


def test_flop_floors_follow_the_issue():
    info = {"linear_parameters": 1000, "up_down_parameters": 400}
    floors = bench_training.flop_floors(info, {"full": 1000, "dense_masked": 400, "neft": 50, "lora": 50})
    assert floors["full"]["flops_per_token"] == 6000
    assert floors["lora"]["flops_per_token"] == 4000
    assert floors["neft"]["flops_per_token"] == (4 + 2 * 0.05) * 1000
    assert floors["dense_masked"]["flops_per_token"] == 4000 + 800


def test_tiny_benchmark_writes_all_methods(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_training.py"), "--model", "tiny", "--device", "cpu",
               "--steps", "2", "--warmup", "1", "--batch-size", "4", "--seq-len", "32", "--out", str(out)]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| method |" in completed.stdout
    summary = json.loads(out.read_text())

    assert set(summary["methods"]) == set(METHODS)
    total = summary["model"]["total_parameters"]
    assert summary["torch"] and summary["threads"] >= 1 and summary["device"]["type"] == "cpu"
    assert summary["mask"]["source"].startswith("random")
    for name, result in summary["methods"].items():
        assert "error" not in result, (name, result)
        assert len(result["step_seconds"]) == 2 and len(result["losses"]) == 3
        assert result["step_seconds_median"] > 0 and result["tokens_per_second"] > 0
        assert all(math.isfinite(loss) for loss in result["losses"])
        assert result["peak_memory_bytes"] >= result["memory_before_train_bytes"] > 0
        assert result["memory_kind"] == "rss high-water mark (training window)"
        assert 0 < result["trainable_parameters"] <= total
        # AdamW keeps two fp32 moments per trained number (plus a step counter per tensor).
        assert result["optimizer_state_bytes"] >= 8 * result["trainable_parameters"]
        assert result["checkpoint_bytes"] > 0 and result["achieved_gflops"] > 0

    methods = summary["methods"]
    assert methods["full"]["trainable_parameters"] == total
    assert methods["neft"]["trainable_parameters"] == summary["mask"]["trainable_parameters"]
    assert methods["dense_masked"]["trainable_parameters"] == summary["model"]["up_down_parameters"]
    neft_trainable = methods["neft"]["trainable_parameters"]
    assert abs(methods["lora"]["trainable_parameters"] - neft_trainable) < 0.5 * neft_trainable
    optimizer_bytes = {name: result["optimizer_state_bytes"] for name, result in methods.items()}
    assert optimizer_bytes["neft"] < optimizer_bytes["dense_masked"] < optimizer_bytes["full"]
    assert "model.safetensors" in methods["full"]["checkpoint_files"]
    assert "model.safetensors" in methods["dense_masked"]["checkpoint_files"]
    assert "neft_delta.safetensors" in methods["neft"]["checkpoint_files"]
    assert "adapter_model.safetensors" in methods["lora"]["checkpoint_files"]
    assert methods["neft"]["checkpoint_bytes"] < methods["full"]["checkpoint_bytes"]

    for key in ("neft_over_lora", "neft_over_full"):
        for field in ("step_time", "peak_memory", "optimizer_state", "checkpoint"):
            assert summary["ratios"][key][field] > 0
    delta = summary["delta_size_check"]
    assert delta["expected_bytes"] == delta["trainable_parameters"] * 4 + delta["indices"] * 8
    assert 1.0 <= delta["ratio"] < 1.2  # the safetensors header is all the tiny model adds
    assert summary["scoring"]["in_memory_seconds_median"] > 0 and summary["scoring"]["neurons"] > 0
    assert set(summary["flop_floor"]) == set(METHODS)
    assert set(summary["targets"]) >= {"neft_step_le_1.05x_lora", "neft_step_le_0.8x_full", "delta_file_le_1.05x_expected"}


def test_scoring_benchmark_scores_every_neuron_of_a_sharded_pair_and_cleans_up(tmp_path):
    out = tmp_path / "scoring.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_scoring.py"), "--shape", "tiny", "--device", "cpu",
               "--repeats", "2", "--scratch", str(tmp_path), "--out", str(out)]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| shape |" in completed.stdout
    result = json.loads(out.read_text())
    layers, d_model, d_ff = result["shape"]["layers"], result["shape"]["d_model"], result["shape"]["d_ff"]
    assert result["neurons"] == layers * 2 * d_ff  # every up_proj row and down_proj column
    assert result["checkpoint_bytes_each"] == layers * 2 * d_model * d_ff * 2  # bf16
    assert len(result["pass_seconds"]) == 2 and result["median_seconds"] > 0
    assert result["one_layer_pair_fp32_bytes"] == 2 * 2 * d_model * d_ff * 4
    assert [path.name for path in tmp_path.iterdir()] == ["scoring.json"], "the temporary checkpoints must be deleted"
