"""Alternative forward passes for `neft.delta.NeuronDeltaLinear`, to time against each other.

`python benchmarks/bench_training.py --neft-forward NAME` patches the class before the NeFT worker
builds its wrappers; `--compile` (a bench_training option) applies torch.compile on top of any of them.

- `library`      : whatever neft/delta.py ships (no patch): a custom autograd function,
                   y = x @ (W + deltas)^T with the merged copy rebuilt in backward and the delta
                   gradients from the selected rows/columns only; FLOPs ~ (4 + 2r) N, the floor.
- `index_add`    : additive form, out of place: y = base(x); y = y.index_add(rows, x @ row_delta^T);
                   y = y + x[:, columns] @ column_delta^T. FLOPs ~ (4 + 6r) N: the delta matmuls run
                   in forward, input-gradient and weight-gradient passes. (neft/delta.py's forward
                   before this benchmark.)
- `inplace`      : the same, with y.index_add_ / y.add_ in place (saves two output-sized copies).

The prototypes of the library's function (`merged`, and `merged_saved`, which kept the merged copy
for backward) were measured in benchmarks/results/README.md and are gone: `neft.delta.weight_with_deltas`
is the one weight-plus-delta function.
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


VARIANTS = {
    "library": ORIGINAL_FORWARD,
    "index_add": forward_index_add,
    "inplace": forward_inplace,
}


def use_variant(name: str) -> None:
    """Make every NeuronDeltaLinear (existing and future) use the named forward."""
    if name not in VARIANTS:
        raise ValueError(f"unknown NeFT forward {name!r}; choose one of {sorted(VARIANTS)}")
    delta_module.NeuronDeltaLinear.forward = VARIANTS[name]
