"""Alternative forward passes for `neft.delta.NeuronDeltaLinear`, to time against each other.

`python benchmarks/bench_training.py --neft-forward NAME` patches the class before the NeFT worker
builds its wrappers; `--compile` (a bench_training option) applies torch.compile on top of any of them.

- `library`      : whatever neft/delta.py ships (no patch). Since this benchmark, that is the
                   merged-weight custom autograd function described under `merged`.
- `index_add`    : additive form, out of place: y = base(x); y = y.index_add(rows, x @ row_delta^T);
                   y = y + x[:, columns] @ column_delta^T. FLOPs ~ (4 + 6r) N: the delta matmuls run
                   in forward, input-gradient and weight-gradient passes. (neft/delta.py's forward
                   before this benchmark.)
- `inplace`      : the same, with y.index_add_ / y.add_ in place (saves two output-sized copies).
- `merged`       : custom autograd function: forward y = x @ (W + deltas)^T with the deltas written
                   into a copy of W (computed in fp32 for the selected units, rounded once to the
                   compute dtype, as autocast does with any fp32 master weight); backward
                   grad_x = grad_y @ (W + deltas) (the merged copy is rebuilt, not kept, so it costs
                   no activation memory), grad_row_delta = grad_y[:, rows]^T x,
                   grad_column_delta = grad_y^T x[:, columns]. FLOPs ~ (4 + 2r) N, the floor.
                   The prototype of what neft/delta.py now does (same math).
- `merged_saved` : as `merged`, but keeps the merged copy from forward for backward (one weight-sized
                   tensor per wrapped matrix alive until backward; fewer copies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import neft.delta as delta_module

ORIGINAL_FORWARD = delta_module.NeuronDeltaLinear.forward


def forward_index_add(self, x: torch.Tensor) -> torch.Tensor:
    y = self.base(x)
    if len(self.rows):
        row_out = F.linear(x, self.row_delta.to(x.dtype))
        y = y.index_add(-1, self.rows, row_out.to(y.dtype))
    if len(self.columns):
        column_out = F.linear(x.index_select(-1, self.columns), self.column_delta.to(x.dtype))
        y = y + column_out.to(y.dtype)
    return y


def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
    y = self.base(x)
    if len(self.rows):
        row_out = F.linear(x, self.row_delta.to(x.dtype))
        y.index_add_(-1, self.rows, row_out.to(y.dtype))
    if len(self.columns):
        column_out = F.linear(x.index_select(-1, self.columns), self.column_delta.to(x.dtype))
        y.add_(column_out.to(y.dtype))
    return y


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def merged_weight(weight, rows, row_delta, columns, column_delta, dtype) -> torch.Tensor:
    """weight with the deltas added: the selected units in fp32, rounded once to `dtype`."""
    merged = weight.to(dtype, copy=True)
    if rows.numel():
        merged.index_copy_(0, rows, (weight.index_select(0, rows).float() + row_delta).to(dtype))
    if columns.numel():
        # Reads `merged` so that an element in both a selected row and column keeps both deltas.
        merged.index_copy_(1, columns, (merged.index_select(1, columns).float() + column_delta).to(dtype))
    return merged


class MergedNeuronLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, rows, row_delta, columns, column_delta, dtype, keep_merged):
        with torch.autocast(x.device.type, enabled=False):
            merged = merged_weight(weight, rows, row_delta, columns, column_delta, dtype)
            x_c = x.to(dtype)
            y = F.linear(x_c, merged)
        ctx.keep_merged = keep_merged
        ctx.dtype = dtype
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(x_c, weight, rows, row_delta, columns, column_delta, merged if keep_merged else None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_c, weight, rows, row_delta, columns, column_delta, merged = ctx.saved_tensors
        dtype = ctx.dtype
        grad_x = grad_row = grad_column = None
        with torch.autocast(grad_y.device.type, enabled=False):
            grad_y = grad_y.to(dtype)
            if ctx.needs_input_grad[0]:
                if merged is None:
                    merged = merged_weight(weight, rows, row_delta, columns, column_delta, dtype)
                grad_x = (grad_y @ merged).to(ctx.x_dtype)
            grad_2d = grad_y.reshape(-1, grad_y.shape[-1])
            x_2d = x_c.reshape(-1, x_c.shape[-1])
            if ctx.needs_input_grad[3]:
                grad_row = (grad_2d.index_select(1, rows).t() @ x_2d).to(row_delta.dtype)
            if ctx.needs_input_grad[5]:
                grad_column = (grad_2d.t() @ x_2d.index_select(1, columns)).to(column_delta.dtype)
        return grad_x, None, None, grad_row, None, grad_column, None, None


def _merged_forward(keep_merged: bool):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x, self.base.weight)
        y = MergedNeuronLinear.apply(x, self.base.weight, self.rows, self.row_delta, self.columns, self.column_delta,
                                     dtype, keep_merged)
        if self.base.bias is not None:
            y = y + self.base.bias.to(y.dtype)
        return y

    return forward


VARIANTS = {
    "library": ORIGINAL_FORWARD,
    "index_add": forward_index_add,
    "inplace": forward_inplace,
    "merged": _merged_forward(keep_merged=False),
    "merged_saved": _merged_forward(keep_merged=True),
}


def use_variant(name: str) -> None:
    """Make every NeuronDeltaLinear (existing and future) use the named forward."""
    if name not in VARIANTS:
        raise ValueError(f"unknown NeFT forward {name!r}; choose one of {sorted(VARIANTS)}")
    delta_module.NeuronDeltaLinear.forward = VARIANTS[name]
