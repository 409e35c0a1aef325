"""neft.measure: the training window's peak memory excludes set-up, and byte counts are exact."""

import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import random_batch

from neft import measure
from neft.measure import CPU_WINDOW_PEAK, MemoryWindow, StepTimer, cpu_description, device_description
from neft.methods import full_finetuning
from neft.training import TrainSettings, train

MB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the RSS high-water-mark reset is Linux's /proc/self/clear_refs")
def test_cpu_window_excludes_what_came_before_and_sees_what_happens_inside():
    before_the_window = torch.ones(256 * MB // 4)  # 256 MB, touched
    del before_the_window
    window = MemoryWindow.start(torch.device("cpu"))
    assert window.kind == CPU_WINDOW_PEAK
    assert window.peak_bytes() < window.before_bytes + 64 * MB
    inside = torch.ones(128 * MB // 4)
    assert window.peak_bytes() >= window.before_bytes + 120 * MB
    del inside


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16 avx512_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16 avx512_vnni
"""


def test_cpu_description_names_the_model_and_the_bf16_features_that_pick_the_kernels():
    assert cpu_description(CPUINFO) == {"name": "Intel(R) Xeon(R) Platinum 8480+", "bf16_features": ["avx512_bf16", "amx_bf16"]}
    assert cpu_description(CPUINFO.replace(" avx512_bf16 amx_tile amx_bf16", ""))["bf16_features"] == []


@pytest.fixture
def machine(monkeypatch):
    """A made-up machine: every source device_description reads, replaced by a known value."""
    cpuinfo = {"text": CPUINFO}

    class FakePath:
        def __init__(self, path):
            assert str(path) == "/proc/cpuinfo", path

        def read_text(self):
            if cpuinfo["text"] is None:
                raise OSError("no /proc")
            return cpuinfo["text"]

    monkeypatch.setattr(measure, "Path", FakePath)
    monkeypatch.setattr(torch, "__version__", "9.8.7")
    monkeypatch.setattr(measure.platform, "platform", lambda: "Linux-fake")
    monkeypatch.setattr(measure.platform, "python_version", lambda: "3.99.0")
    monkeypatch.setattr(measure.platform, "processor", lambda: "")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(measure.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(measure.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    return cpuinfo


def test_device_description_of_a_cpu_reports_its_model_kernels_and_the_cpus_this_process_may_use(machine):
    software = {"type": "cpu", "torch": "9.8.7", "platform": "Linux-fake", "python": "3.99.0"}
    assert device_description(torch.device("cpu")) == {
        **software, "name": "Intel(R) Xeon(R) Platinum 8480+", "bf16_features": ["avx512_bf16", "amx_bf16"],
        "cpu_capability": "AVX512", "logical_cpus": 8, "usable_cpus": 3}
    machine["text"] = None  # not Linux: no /proc/cpuinfo, and platform.processor() says nothing either
    assert device_description(torch.device("cpu")) == {
        **software, "name": "unknown", "bf16_features": [], "cpu_capability": "AVX512", "logical_cpus": 8, "usable_cpus": 3}


def test_device_description_of_a_gpu_reports_its_name_memory_and_cuda(machine, monkeypatch):
    properties = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=81559 * MB + 12345)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert device_description(torch.device("cuda", 0)) == {
        "type": "cuda", "torch": "9.8.7", "platform": "Linux-fake", "python": "3.99.0",
        "name": "NVIDIA H100 80GB HBM3", "total_memory_mb": 81559, "cuda": "12.8"}


def test_step_timer_keeps_one_duration_per_step():
    timer = StepTimer(torch.device("cpu"))
    for _ in range(3):
        timer.start()
        torch.ones(1000).sum()
        assert timer.stop() >= 0
    assert len(timer.seconds) == 3


def test_training_reports_exact_optimizer_and_gradient_bytes_and_a_step_time_per_step(tiny_model):
    trainable = full_finetuning(tiny_model)
    batch = random_batch(tiny_model.config.vocab_size)
    result = train(trainable.model, trainable.parameters, iter([batch] * 3), TrainSettings(steps=3, learning_rate=1e-3))
    numbers, tensors = trainable.trainable_parameters, len(trainable.parameters)
    assert result.gradient_bytes == 4 * numbers  # fp32 gradients of every trained number
    assert result.optimizer_state_bytes == 2 * 4 * numbers + 4 * tensors  # AdamW: two fp32 moments, a step scalar per tensor
    assert len(result.step_seconds) == 3 and sum(result.step_seconds) <= result.seconds
    assert result.peak_memory_bytes >= result.memory_before_bytes > 0
