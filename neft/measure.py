"""Measuring training the same way everywhere: the training loop and the benchmark both use this.

- **Peak memory of the training window.** On CUDA, `torch.cuda.max_memory_allocated` after
  `reset_peak_memory_stats` at the start of the window. On CPU, the kernel's resident-set high-water
  mark (VmHWM) after resetting it to the current RSS (`/proc/self/clear_refs`), so that loading the
  model and setting up the method do not count. Where that reset is unavailable (not Linux), the
  process-lifetime peak, and `MemoryWindow.kind` says so.
- **Optimizer-state and gradient bytes**: the sizes of the tensors themselves.
- **Step time**: wall clock with the device synchronised, so queued GPU work is not missed.
- **The hardware** (`device_description`): bf16 kernels round differently on different CPUs and
  GPUs, so the same seed gives the same bytes only on the same kind of machine; every training
  summary says which one computed it.
- **Peak bytes of the tensors a block creates** (`TensorLifetimes`), exact on any device: every
  storage an op makes inside the block, from its creation to its release. The memory plan fits its
  activation figures to these; an RSS high-water mark would add the C allocator's slack.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import platform
import resource
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

CUDA_PEAK = "cuda max_memory_allocated (training window)"
CPU_WINDOW_PEAK = "rss high-water mark (training window)"
CPU_PROCESS_PEAK = "rss high-water mark (whole process: the window reset is unavailable here)"


# CPU features that decide which bf16 kernels oneDNN runs (and so how bf16 results round).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16")


def cpu_description(cpuinfo: str) -> dict[str, Any]:
    """The CPU model and its bf16-relevant features, from the text of /proc/cpuinfo."""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"name": fields.get("model name") or platform.processor() or "unknown",
            "bf16_features": [flag for flag in BF16_CPU_FLAGS if flag in flags]}


def device_description(device: torch.device) -> dict[str, Any]:
    """What computed a run: the accelerator or CPU model, the kernels' instruction set, the software."""
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "platform": platform.platform(),
                            "python": platform.python_version()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=properties.name, total_memory_mb=round(properties.total_memory / 2**20), cuda=torch.version.cuda)
        return info
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info.update(cpu_description(cpuinfo), cpu_capability=torch.backends.cpu.get_cpu_capability(), logical_cpus=os.cpu_count(),
                usable_cpus=usable)
    return info


def tensor_bytes(tensors: Iterable[object]) -> int:
    """Bytes this process holds: of a sharded (FSDP2) DTensor, its local shard."""
    local = (t.to_local() if isinstance(t, DTensor) else t for t in tensors if torch.is_tensor(t))
    return sum(t.numel() * t.element_size() for t in local)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())


def gradient_bytes(parameters: Iterable[torch.nn.Parameter]) -> int:
    return tensor_bytes(p.grad for p in parameters if p.grad is not None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status in KiB; None where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS, so that set-up garbage does not sit in the window's RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class MemoryWindow:
    """Peak memory from `start` on. `before_bytes` is what was in use when the window opened."""

    device: torch.device
    before_bytes: int
    kind: str

    @classmethod
    def start(cls, device: torch.device) -> MemoryWindow:
        _release_freed_memory()
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return cls(device, torch.cuda.memory_allocated(device), CUDA_PEAK)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            kind = CPU_WINDOW_PEAK
        except OSError:
            kind = CPU_PROCESS_PEAK
        return cls(device, (_status_kib("VmRSS") or 0) * 1024, kind)

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        high_water = _status_kib("VmHWM") if self.kind == CPU_WINDOW_PEAK else None
        if high_water is not None:
            return high_water * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class StepTimer:
    """Wall-clock seconds of one step at a time, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def stop(self) -> float:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)
        return self.seconds[-1]


class TensorLifetimes(TorchDispatchMode):
    """Inside the block, every tensor storage an op creates, with its size, creation and release, in
    order (autograd's backward ops included). `peak_bytes` is the most of them alive at once;
    storages made before the block (the weights) do not count."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: weakref.WeakKeyDictionary[torch.UntypedStorage, tuple[int, int]] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self.events: list[tuple[int, int]] = []  # (storage id, +bytes at creation / -bytes at release)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        output = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage() not in self._sizes:
                storage = tensor.untyped_storage()
                key, size = next(self._ids), storage.nbytes()
                self._sizes[storage] = (key, size)
                self.events.append((key, size))
                weakref.finalize(storage, self.events.append, (key, -size))
        return output

    def key(self, tensor: torch.Tensor) -> int | None:
        """The id of the storage behind `tensor`, if an op inside the block made it."""
        found = self._sizes.get(tensor.untyped_storage())
        return None if found is None else found[0]

    def peak_bytes(self, excluding: Iterable[int] = ()) -> int:
        """The most bytes alive at once, leaving out the storages with ids in `excluding`."""
        left_out = set(excluding)
        alive = peak = 0
        for key, change in self.events:
            if key not in left_out:
                alive += change
                peak = max(peak, alive)
        return peak
