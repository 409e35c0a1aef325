"""Measuring training the same way everywhere: the training loop and the benchmark both use this.

- **Peak memory of the training window.** On CUDA, `torch.cuda.max_memory_allocated` after
  `reset_peak_memory_stats` at the start of the window. On CPU, the kernel's resident-set high-water
  mark (VmHWM) after resetting it to the current RSS (`/proc/self/clear_refs`), so that loading the
  model and setting up the method do not count. Where that reset is unavailable (not Linux), the
  process-lifetime peak, and `MemoryWindow.kind` says so.
- **Optimizer-state and gradient bytes**: the sizes of the tensors themselves.
- **Step time**: wall clock with the device synchronised, so queued GPU work is not missed.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

CUDA_PEAK = "cuda max_memory_allocated (training window)"
CPU_WINDOW_PEAK = "rss high-water mark (training window)"
CPU_PROCESS_PEAK = "rss high-water mark (whole process: the window reset is unavailable here)"


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
