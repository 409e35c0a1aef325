"""Sparse neuron deltas: train only the selected rows/columns, at an adapter's cost.

A `NeuronDeltaLinear` wraps a frozen `nn.Linear` and adds small trainable tensors for the selected
output units (rows of the weight) and input units (columns). The forward pass adds their
contribution with a gather and a small matmul, so backward never forms the full weight gradient and
the optimizer only ever sees k * d_model numbers. At the end, `merge_deltas` writes them into the
base weights with one indexed add per matrix; everything unselected keeps its exact base value.

On disk a delta is like a PEFT adapter: `neft_delta.safetensors` (indices + values) and
`neft_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from neft.masks import NeuronMask
from neft.neurons import NEURON_KINDS

DELTA_WEIGHTS = "neft_delta.safetensors"
DELTA_CONFIG = "neft_config.json"
DELTA_FORMAT = "neft-delta/v1"


class NeuronDeltaLinear(nn.Module):
    """y = base(x) + contributions of trainable deltas on selected rows and columns of base.weight."""

    def __init__(self, base: nn.Linear, rows: list[int], columns: list[int]):
        super().__init__()
        self.base = base
        device = base.weight.device
        # Deltas live in fp32 whatever the base dtype: they are small and accumulate tiny updates.
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long, device=device))
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long, device=device))
        self.row_delta = nn.Parameter(torch.zeros(len(rows), base.in_features, device=device))
        self.column_delta = nn.Parameter(torch.zeros(base.out_features, len(columns), device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if len(self.rows):
            row_out = F.linear(x, self.row_delta.to(x.dtype))
            y = y.index_add(-1, self.rows, row_out.to(y.dtype))
        if len(self.columns):
            column_out = F.linear(x.index_select(-1, self.columns), self.column_delta.to(x.dtype))
            y = y + column_out.to(y.dtype)
        return y

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with the deltas written in; computed in fp32, returned in the base dtype."""
        weight = self.base.weight.float().clone()
        weight.index_add_(0, self.rows, self.row_delta.float())
        weight.index_add_(1, self.columns, self.column_delta.float())
        return weight.to(self.base.weight.dtype)


def _selected_units(mask: NeuronMask, layer: int, module_suffix: str) -> tuple[list[int], list[int]]:
    """Rows and columns of one weight matrix that the mask selects (a matrix may host several kinds)."""
    rows: list[int] = []
    columns: list[int] = []
    for kind in NEURON_KINDS.values():
        if kind.module == module_suffix:
            (rows if kind.axis == 0 else columns).extend(mask.layer_indices(kind.name, layer))
    return sorted(rows), sorted(columns)


def attach_deltas(model: nn.Module, mask: NeuronMask) -> dict[str, NeuronDeltaLinear]:
    """Freeze the model and wrap every matrix that holds selected neurons; returns the wrappers by name."""
    model.requires_grad_(False)
    wrappers: dict[str, NeuronDeltaLinear] = {}
    module_suffixes = sorted({kind.module for kind in NEURON_KINDS.values()})
    for layer in range(mask.shape.num_layers):
        for suffix in module_suffixes:
            rows, columns = _selected_units(mask, layer, suffix)
            if not rows and not columns:
                continue
            name = f"model.layers.{layer}.{suffix}"
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            wrapper = NeuronDeltaLinear(getattr(parent, child_name), rows, columns)
            setattr(parent, child_name, wrapper)
            wrappers[name] = wrapper
    return wrappers


@torch.no_grad()
def merge_deltas(model: nn.Module, wrappers: dict[str, NeuronDeltaLinear]) -> nn.Module:
    """Write every delta into its base weight and put the plain nn.Linear back."""
    for name, wrapper in wrappers.items():
        wrapper.base.weight.copy_(wrapper.merged_weight())
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, wrapper.base)
    return model


def delta_tensors(wrappers: dict[str, NeuronDeltaLinear]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, wrapper in wrappers.items():
        tensors[f"{name}.rows"] = wrapper.rows.cpu()
        tensors[f"{name}.row_delta"] = wrapper.row_delta.detach().cpu().contiguous()
        tensors[f"{name}.columns"] = wrapper.columns.cpu()
        tensors[f"{name}.column_delta"] = wrapper.column_delta.detach().cpu().contiguous()
    return tensors


def save_delta(wrappers: dict[str, NeuronDeltaLinear], out_dir: Path, metadata: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(delta_tensors(wrappers), out_dir / DELTA_WEIGHTS)
    (out_dir / DELTA_CONFIG).write_text(json.dumps({"format": DELTA_FORMAT, **metadata}, indent=2))


def load_delta(delta_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {rows, row_delta, columns, column_delta}} from a saved delta."""
    delta_dir = Path(delta_dir)
    config = json.loads((delta_dir / DELTA_CONFIG).read_text())
    if config.get("format") != DELTA_FORMAT:
        raise ValueError(f"{delta_dir}: not a {DELTA_FORMAT} delta")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(delta_dir / DELTA_WEIGHTS).items():
        name, _, part = key.rpartition(".")
        modules.setdefault(name, {})[part] = tensor
    return modules


@torch.no_grad()
def apply_delta(model: nn.Module, modules: dict[str, dict[str, torch.Tensor]]) -> nn.Module:
    """Merge a loaded delta into a plain model in place (the adapter's `merge_and_unload`)."""
    for name, parts in modules.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"delta names module {name!r}, which the model does not have") from None
        weight = linear.weight
        rows, columns = parts["rows"].to(weight.device), parts["columns"].to(weight.device)
        expected = {"row_delta": (len(rows), weight.shape[1]), "column_delta": (weight.shape[0], len(columns))}
        for part, shape in expected.items():
            if tuple(parts[part].shape) != shape:
                raise ValueError(f"delta {name}.{part} has shape {tuple(parts[part].shape)}, model needs {shape}")
        merged = weight.float()
        merged.index_add_(0, rows, parts["row_delta"].to(weight.device))
        merged.index_add_(1, columns, parts["column_delta"].to(weight.device))
        weight.copy_(merged.to(weight.dtype))
    return model

