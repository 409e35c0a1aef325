"""Sparse neuron deltas: train only the selected rows/columns, at an adapter's cost.

A `NeuronDeltaLinear` wraps a frozen `nn.Linear` and adds small trainable tensors for the selected
output units (rows of the weight) and input units (columns). The forward pass multiplies by a
transient copy of the weight with the deltas written in (one matmul, as the plain layer does), and
backward computes the input gradient with that copy (rebuilt, not kept) and the delta gradients
from the selected rows/columns only: grad_rows = grad_y[:, rows]^T x, grad_columns = grad_y^T x[:, columns].
The full weight gradient never exists, the optimizer only ever sees k * d_model numbers, and a step
costs ~(4 + 2r) N FLOPs, the floor (an additive gather + small-matmul form costs ~(4 + 6r) N; see
benchmarks/results/README.md for the measured difference). At the end, `merge_deltas` writes the
deltas into the base weights with one indexed add per matrix; everything unselected keeps its exact
base value.

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


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the matmul runs in: autocast's where it is on (as nn.Linear would), else the weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def _weight_with_deltas(weight, rows, row_delta, columns, column_delta, dtype: torch.dtype) -> torch.Tensor:
    """A copy of `weight` in `dtype` with the deltas added: selected units summed in fp32, rounded once."""
    merged = weight.to(dtype, copy=True)
    if rows.numel():
        merged.index_copy_(0, rows, (weight.index_select(0, rows).float() + row_delta.float()).to(dtype))
    if columns.numel():
        # Reads `merged`, so an element in both a selected row and a selected column keeps both deltas.
        merged.index_copy_(1, columns, (merged.index_select(1, columns).float() + column_delta.float()).to(dtype))
    return merged


class _NeuronDeltaMatmul(torch.autograd.Function):
    """y = x @ (W + deltas)^T; gradients for x and the two deltas only (W is frozen)."""

    @staticmethod
    def forward(ctx, x, weight, rows, row_delta, columns, column_delta, dtype):
        with torch.autocast(x.device.type, enabled=False):
            x_c = x.to(dtype)
            y = F.linear(x_c, _weight_with_deltas(weight, rows, row_delta, columns, column_delta, dtype))
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        # Keep only the input the delta gradients need: all of x for rows, the selected columns of x
        # otherwise (a matrix with only column neurons, like down_proj, keeps k of its d_ff inputs).
        ctx.full_x = bool(rows.numel())
        kept_x = x_c if ctx.full_x else x_c.index_select(-1, columns)
        ctx.save_for_backward(kept_x, weight, rows, row_delta, columns, column_delta)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        kept_x, weight, rows, row_delta, columns, column_delta = ctx.saved_tensors
        grad_x = grad_rows = grad_columns = None
        with torch.autocast(grad_y.device.type, enabled=False):
            grad_y = grad_y.to(ctx.dtype)
            if ctx.needs_input_grad[0]:
                merged = _weight_with_deltas(weight, rows, row_delta, columns, column_delta, ctx.dtype)
                grad_x = (grad_y @ merged).to(ctx.x_dtype)
            grad_2d, x_2d = grad_y.reshape(-1, grad_y.shape[-1]), kept_x.reshape(-1, kept_x.shape[-1])
            if ctx.needs_input_grad[3]:
                grad_rows = (grad_2d.index_select(1, rows).t() @ x_2d).to(row_delta.dtype) if ctx.full_x \
                    else torch.zeros_like(row_delta)  # no rows selected: an empty gradient
            if ctx.needs_input_grad[5]:
                x_columns = x_2d.index_select(1, columns) if ctx.full_x else x_2d
                grad_columns = (grad_2d.t() @ x_columns).to(column_delta.dtype)
        return grad_x, None, None, grad_rows, None, grad_columns, None


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
        weight = self.base.weight
        y = _NeuronDeltaMatmul.apply(x, weight, self.rows, self.row_delta, self.columns, self.column_delta,
                                     _compute_dtype(x, weight))
        if self.base.bias is not None:
            y = y + self.base.bias.to(y.dtype)
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

