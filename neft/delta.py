"""Sparse neuron deltas: train only the selected rows/columns, at an adapter's cost.

A `NeuronDeltaLinear` wraps a frozen `nn.Linear` and adds small trainable tensors for the selected
output units (rows of the weight) and input units (columns). The forward pass multiplies by a
transient copy of the weight with the deltas written in (one matmul, as the plain layer does), and
backward computes the input gradient with that copy (rebuilt, not kept) and the delta gradients
from the selected rows/columns only: grad_rows = grad_y[:, rows]^T x, grad_columns = grad_y^T x[:, columns].
The full weight gradient never exists, the optimizer only ever sees k * d_model numbers, and a step
costs ~(4 + 2r) N FLOPs, the floor (an additive gather + small-matmul form costs ~(4 + 6r) N; see
benchmarks/results/README.md for the measured difference). Merging writes the deltas into the
base weights with one indexed add per matrix; everything unselected keeps its exact base value.
`neft.adapter` builds the user-facing adapter (`get_neft_model`) from these pieces.

On disk a delta is like a PEFT adapter: `neft_delta.safetensors` (indices + values) and
`neft_config.json` (a `DeltaConfig`, validated on load). One function, `weight_with_deltas`, adds
deltas to a weight everywhere: in the forward and backward pass, when merging in memory and when
merging a loaded file.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from neft.errors import UserError
from neft.io import load_safetensors
from neft.masks import NeuronMask
from neft.neurons import NEURON_KINDS, DecoderLayout

DELTA_WEIGHTS = "neft_delta.safetensors"
DELTA_CONFIG = "neft_config.json"
# v2: neft_config.json is a DeltaConfig (d_model added, every field validated on load); v1 configs were free-form.
DELTA_FORMAT = "neft-delta/v2"


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the matmul runs in: autocast's where it is on (as nn.Linear would), else the weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


class DeltaError(UserError):
    """A saved delta that is malformed or does not fit the model it is applied to."""


@dataclass(frozen=True)
class DeltaConfig:
    """`neft_config.json`: what a saved delta is and what it was made for (like PEFT's LoraConfig)."""

    base_model: str
    kinds: tuple[str, ...]
    num_neurons: int
    ratio: float
    d_model: int
    format: str = DELTA_FORMAT
    # Fingerprints (neft.provenance) of the base weights and mask.json it was trained from; "" unknown.
    base_fingerprint: str = ""
    mask_fingerprint: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.format != DELTA_FORMAT:
            problems.append(f"format is {self.format!r}, this version reads {DELTA_FORMAT!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            problems.append(f"base_model must be a non-empty string, got {self.base_model!r}")
        if not self.kinds or any(kind not in NEURON_KINDS for kind in self.kinds):
            problems.append(f"kinds must be a non-empty subset of {sorted(NEURON_KINDS)}, got {list(self.kinds)!r}")
        for name in ("num_neurons", "d_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("base_fingerprint", "mask_fingerprint"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string (a sha256, or empty), got {getattr(self, name)!r}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            problems.append(f"ratio must be a number in (0, 1), got {self.ratio!r}")
        if problems:
            raise DeltaError(f"invalid {DELTA_CONFIG}: " + "; ".join(problems))

    @classmethod
    def for_mask(cls, mask: NeuronMask, base_model: str, base_fingerprint: str = "", mask_fingerprint: str = "") -> DeltaConfig:
        kinds = tuple(kind for kind in NEURON_KINDS if mask.indices.get(kind))
        return cls(base_model, kinds, mask.num_neurons, mask.ratio, mask.shape.d_model,
                   base_fingerprint=base_fingerprint, mask_fingerprint=mask_fingerprint)

    def to_json(self) -> dict:
        return {**asdict(self), "kinds": list(self.kinds)}

    @classmethod
    def from_json(cls, data: object, source: str = DELTA_CONFIG) -> DeltaConfig:
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict):
            raise DeltaError(f"{source}: expected a JSON object with {names}, got {type(data).__name__}")
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data and n not in optional]
        if unknown or missing:
            raise DeltaError(f"{source}: unknown keys {unknown}, missing keys {missing}; a {DELTA_FORMAT} config has {names}")
        kinds = data["kinds"]
        return cls(**{**data, "kinds": tuple(kinds) if isinstance(kinds, list) else kinds})


@dataclass
class NeftDelta:
    """A loaded delta: its config and {module name: {rows, row_delta, columns, column_delta}}."""

    config: DeltaConfig
    modules: dict[str, dict[str, torch.Tensor]]


def weight_with_deltas(weight, rows, row_delta, columns, column_delta, dtype: torch.dtype) -> torch.Tensor:
    """A copy of `weight` in `dtype` with the deltas added: the selected units are summed in fp32 and
    rounded once, every other weight is the base weight cast to `dtype`. An element in both a selected
    row and a selected column gets both deltas."""
    merged = weight.to(dtype, copy=True)
    if rows.numel():
        merged.index_copy_(0, rows, (weight.index_select(0, rows).float() + row_delta.float()).to(dtype))
    if columns.numel():
        selected = weight.index_select(1, columns).float()
        if rows.numel():
            selected.index_add_(0, rows, row_delta.float().index_select(1, columns))
        merged.index_copy_(1, columns, (selected + column_delta.float()).to(dtype))
    return merged


class _NeuronDeltaMatmul(torch.autograd.Function):
    """y = x @ (W + deltas)^T; gradients for x and the two deltas only (W is frozen)."""

    @staticmethod
    def forward(ctx, x, weight, rows, row_delta, columns, column_delta, dtype):
        with torch.autocast(x.device.type, enabled=False):
            x_c = x.to(dtype)
            y = F.linear(x_c, weight_with_deltas(weight, rows, row_delta, columns, column_delta, dtype))
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
                merged = weight_with_deltas(weight, rows, row_delta, columns, column_delta, ctx.dtype)
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
    """y = base(x) + contributions of trainable deltas on selected rows and columns of base.weight.

    `merge()` writes the deltas into base.weight in place and keeps the replaced rows and columns, so
    `unmerge()` restores the base weight bit for bit; while `disabled`, the layer is the base layer."""

    def __init__(self, base: nn.Linear, rows: list[int], columns: list[int]):
        super().__init__()
        self.base = base
        device = base.weight.device
        # Deltas live in fp32 whatever the base dtype: they are small and accumulate tiny updates.
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long, device=device))
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long, device=device))
        self.row_delta = nn.Parameter(torch.zeros(len(rows), base.in_features, device=device))
        self.column_delta = nn.Parameter(torch.zeros(base.out_features, len(columns), device=device))
        self.disabled = False
        self._replaced: tuple[torch.Tensor, torch.Tensor] | None = None  # base rows, columns while merged

    @property
    def merged(self) -> bool:
        return self._replaced is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged:
            return self.base(x)
        weight = self.base.weight
        y = _NeuronDeltaMatmul.apply(x, weight, self.rows, self.row_delta, self.columns, self.column_delta,
                                     _compute_dtype(x, weight))
        if self.base.bias is not None:
            y = y + self.base.bias.to(y.dtype)
        return y

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with the deltas written in, in the base dtype."""
        weight = self.base.weight
        return weight_with_deltas(weight, self.rows, self.row_delta, self.columns, self.column_delta, weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        weight = self.base.weight
        self._replaced = (weight.index_select(0, self.rows), weight.index_select(1, self.columns))
        weight.copy_(self.merged_weight())

    @torch.no_grad()
    def unmerge(self) -> None:
        if self._replaced is None:
            return
        rows, columns = self._replaced
        self.base.weight.index_copy_(1, self.columns, columns).index_copy_(0, self.rows, rows)
        self._replaced = None


Selection = dict[str, tuple[list[int], list[int]]]


def plain_linear(model: nn.Module, name: str) -> nn.Linear:
    """The nn.Linear at `name`; a layer that already carries a delta cannot take a second one."""
    module = model.get_submodule(name)
    if isinstance(module, NeuronDeltaLinear):
        raise DeltaError(f"{name} already carries a NeFT delta: attach to a fresh base model, or merge_and_unload() first")
    if not isinstance(module, nn.Linear):
        raise DeltaError(f"{name} is a {type(module).__name__}, not an nn.Linear")
    return module


def mask_selection(mask: NeuronMask, layout: DecoderLayout) -> Selection:
    """{module name: (rows, columns)} of every matrix in which the mask selects neurons, layer by layer
    and, within a layer, by projection name. The order is the optimizer's parameter order, which sets
    the summation order of the clipped gradient norm, so it is part of what a seed reproduces."""
    selection: Selection = {}
    for layer in range(mask.shape.num_layers):
        for kind in sorted(NEURON_KINDS.values(), key=lambda kind: kind.projection):
            indices = mask.layer_indices(kind.name, layer)
            if indices:
                rows, columns = selection.setdefault(layout.module_name(layer, kind), ([], []))
                (rows if kind.axis == 0 else columns).extend(indices)
    return {name: (sorted(rows), sorted(columns)) for name, (rows, columns) in selection.items()}


def attach_deltas(model: nn.Module, selection: Selection) -> dict[str, NeuronDeltaLinear]:
    """Freeze the model and wrap every selected matrix; returns the wrappers by module name."""
    linears = {name: plain_linear(model, name) for name in selection}  # every check before any change
    model.requires_grad_(False)
    wrappers: dict[str, NeuronDeltaLinear] = {}
    for name, (rows, columns) in selection.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapper = NeuronDeltaLinear(linears[name], rows, columns)
        setattr(parent, child_name, wrapper)
        wrappers[name] = wrapper
    return wrappers


def detach_deltas(model: nn.Module, wrappers: dict[str, NeuronDeltaLinear]) -> nn.Module:
    """Put each wrapper's plain nn.Linear back (merged or not, as the wrapper left it)."""
    for name, wrapper in wrappers.items():
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


def save_delta(wrappers: dict[str, NeuronDeltaLinear], out_dir: Path, config: DeltaConfig) -> None:
    saved_neurons = sum(len(wrapper.rows) + len(wrapper.columns) for wrapper in wrappers.values())
    if saved_neurons != config.num_neurons:
        raise ValueError(f"the wrappers hold {saved_neurons} neurons, the config says {config.num_neurons}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(delta_tensors(wrappers), out_dir / DELTA_WEIGHTS)
    (out_dir / DELTA_CONFIG).write_text(json.dumps(config.to_json(), indent=2))


def load_delta(delta_dir: Path) -> NeftDelta:
    """A saved delta, its config validated and its tensors checked against the config."""
    delta_dir = Path(delta_dir)
    config_file, weights_file = delta_dir / DELTA_CONFIG, delta_dir / DELTA_WEIGHTS
    for path in (config_file, weights_file):
        if not path.is_file():
            raise DeltaError(f"{delta_dir} is not a NeFT delta: {path.name} is missing (train one with `dvc repro train_neft`)")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeltaError(f"{config_file}: not valid JSON ({error})") from None
    config = DeltaConfig.from_json(data, str(config_file))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_safetensors(weights_file).items():
        name, _, part = key.rpartition(".")
        modules.setdefault(name, {})[part] = tensor
    neurons = 0
    for name, parts in modules.items():
        if set(parts) != {"rows", "row_delta", "columns", "column_delta"}:
            raise DeltaError(f"{weights_file}: module {name} has tensors {sorted(parts)}, needs rows, row_delta, columns, column_delta")
        rows, columns = len(parts["rows"]), len(parts["columns"])
        if parts["row_delta"].shape[0] != rows or parts["column_delta"].shape[1] != columns:
            raise DeltaError(f"{weights_file}: module {name} has {rows} rows and {columns} columns but deltas of shape "
                             f"{tuple(parts['row_delta'].shape)} and {tuple(parts['column_delta'].shape)}")
        neurons += rows + columns
    if neurons != config.num_neurons:
        raise DeltaError(f"{weights_file} holds {neurons} neurons, its {DELTA_CONFIG} says num_neurons {config.num_neurons}")
    return NeftDelta(config, modules)


def require_fits(model: nn.Module, delta: NeftDelta) -> None:
    """Every module the delta names is an nn.Linear of the model with the shape its deltas need."""
    for name, parts in delta.modules.items():
        try:
            linear = plain_linear(model, name)
        except AttributeError:
            raise DeltaError(f"the delta names module {name!r}, which the model does not have: it was made for "
                             f"{delta.config.base_model!r}") from None
        weight = linear.weight
        expected = {"row_delta": (len(parts["rows"]), weight.shape[1]), "column_delta": (weight.shape[0], len(parts["columns"]))}
        for part, shape in expected.items():
            if tuple(parts[part].shape) != shape:
                raise DeltaError(f"delta {name}.{part} has shape {tuple(parts[part].shape)}, the model needs {shape}: it was "
                                 f"made for {delta.config.base_model!r}")
