"""Neurons of a Llama- or Gemma-style gated MLP and how much a probe fine-tune changed each of them.

For `down(act(gate(x)) * up(x))`, hidden unit j of layer i gives two selection units, each a
vector of d_model weights: the "in" neuron (row j of up_proj) and the "out" neuron (column j of
down_proj). Optionally "gate" (row j of gate_proj). A neuron's score is how far the probe turned
it: the signed cosine between its base and probe weights, and its change `1 - cosine` (higher means
changed more; the mask keeps the k largest changes).

Why not the paper's fp32 cosine: a short probe turns a neuron by ~1e-6 in cosine, and fp32 spends its
7 digits on the leading 0.99999, so on SmolLM2 the 92,160 fp32 cosines took 87 distinct values and
a mask's cutoff was mostly decided by position. `neuron_change` computes `1 - cosine` from the
difference Δ = probe - base in float64 without cancellation (see there); `fp32` keeps the paper's
form for comparison.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from neft.errors import ConfigError
from neft.io import check_safetensors, check_safetensors_in

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class NeuronKind:
    """Which MLP projection holds this kind of neuron, and along which axis of its weight a neuron lies."""

    name: str
    projection: str  # attribute name of the projection inside a layer's MLP
    axis: int  # 0: a neuron is a row of the weight; 1: a column


NEURON_KINDS = {
    "in": NeuronKind("in", "up_proj", axis=0),
    "out": NeuronKind("out", "down_proj", axis=1),
    "gate": NeuronKind("gate", "gate_proj", axis=0),
}
DEFAULT_KINDS = ("in", "out")
# <layers>.<i>.<mlp>.up_proj.weight: the non-greedy <layers> stops at the first numbered segment.
_UP_PROJ_WEIGHT = re.compile(r"^(?P<layers>.+?)\.(?P<layer>\d+)\.(?P<mlp>.+)\.up_proj\.weight$")


class UnsupportedArchitecture(ConfigError):
    """The model has no Llama/Gemma-style gated MLP where NeFT looks for its neurons."""


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder keeps its gated MLPs: layer i's projection p is `<layers>.<i>.<mlp>.<p>`.
    Llama, Qwen2, Mistral and Gemma use `model.layers` and `mlp`; `find` reads any other layout off
    the parameter names, so a model only needs MLPs with up_proj/down_proj (and gate_proj) somewhere."""

    layers: str
    mlp: str
    num_layers: int

    def module_name(self, layer: int, kind: NeuronKind) -> str:
        return f"{self.layers}.{layer}.{self.mlp}.{kind.projection}"

    def weight_name(self, layer: int, kind: NeuronKind) -> str:
        return f"{self.module_name(layer, kind)}.weight"

    @classmethod
    def find(cls, parameter_names: Iterable[str], layers: str | None = None, mlp: str | None = None) -> DecoderLayout:
        """The one layout whose up_proj weights the names hold (layers 0..n-1, each with its down_proj);
        `layers` / `mlp` pin either part where a model has several candidates."""
        names = set(parameter_names)
        found: dict[tuple[str, str], set[int]] = {}
        for name in names:
            match = _UP_PROJ_WEIGHT.match(name)
            if match and (layers is None or match["layers"] == layers) and (mlp is None or match["mlp"] == mlp):
                found.setdefault((match["layers"], match["mlp"]), set()).add(int(match["layer"]))
        complete = [
            cls(layers_path, mlp_path, len(indices))
            for (layers_path, mlp_path), indices in sorted(found.items())
            if indices == set(range(len(indices)))
            and all(f"{layers_path}.{i}.{mlp_path}.down_proj.weight" in names for i in indices)
        ]
        pinned = f" under layers={layers!r}, mlp={mlp!r}" if layers or mlp else ""
        if not complete:
            raise UnsupportedArchitecture(
                f"no decoder layers with a gated MLP found{pinned}: NeFT needs <layers>.<i>.<mlp>.up_proj and "
                f".down_proj weights (e.g. model.layers.0.mlp.up_proj.weight) in every layer")
        if len(complete) > 1:
            options = ", ".join(f"layers={c.layers!r} mlp={c.mlp!r}" for c in complete)
            raise UnsupportedArchitecture(f"several decoder layouts found ({options}): name one with layers_path and mlp_path")
        return complete[0]

    @classmethod
    def of(cls, model: torch.nn.Module, layers: str | None = None, mlp: str | None = None) -> DecoderLayout:
        # Module names, not parameter names: a projection already wrapped (NeuronDeltaLinear, LoRA)
        # keeps its name while its weight moves to `<name>.base.weight`.
        return cls.find((f"{name}.weight" for name, _ in model.named_modules()), layers, mlp)


def require_supported_architecture(model: torch.nn.Module) -> DecoderLayout:
    """The model's layout, after checking that every layer holds NeFT's matrices as bias-free
    nn.Linear of shape d_ff x d_model (up, gate) and d_model x d_ff (down). Llama, Qwen2, Mistral and
    Gemma 1-3 qualify; norms, activation and embedding tying do not matter, because NeFT only adds to
    rows of up_proj/gate_proj and columns of down_proj."""
    try:
        layout = DecoderLayout.of(model)
    except UnsupportedArchitecture as error:
        raise UnsupportedArchitecture(f"unsupported architecture {type(model).__name__}: {error}") from None
    first_up = model.get_submodule(layout.module_name(0, NEURON_KINDS["in"]))
    d_model, d_ff = first_up.in_features, first_up.out_features
    expected = {"in": (d_ff, d_model), "gate": (d_ff, d_model), "out": (d_model, d_ff)}
    wrong = []
    for layer in range(layout.num_layers):
        for kind in NEURON_KINDS.values():
            name = layout.module_name(layer, kind)
            module = model.get_submodule(name) if _has_submodule(model, name) else None
            if not (isinstance(module, torch.nn.Linear) and module.bias is None
                    and tuple(module.weight.shape) == expected[kind.name]):
                wrong.append(f"{name} (bias-free Linear, weight {expected[kind.name][0]} x {expected[kind.name][1]})")
    if wrong:
        shown = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise UnsupportedArchitecture(
            f"unsupported architecture {type(model).__name__}: NeFT needs a gated MLP at "
            f"{layout.layers}.<i>.{layout.mlp}.{{up_proj, gate_proj, down_proj}} in every layer; missing: {shown}")
    return layout


def _has_submodule(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def resolve_kinds(kinds: list[str] | tuple[str, ...]) -> list[NeuronKind]:
    unknown = sorted(set(kinds) - set(NEURON_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown neuron kind(s) {unknown}; choose from {sorted(NEURON_KINDS)}")
    return [NEURON_KINDS[name] for name in kinds]


SCORE_FORMS = ("stable", "fp32")


def _check_pair(base: torch.Tensor, tuned: torch.Tensor) -> None:
    if base.shape != tuned.shape:
        raise ValueError(f"shape mismatch: base {tuple(base.shape)} vs tuned {tuple(tuned.shape)}")


def cosine_per_neuron(base: torch.Tensor, tuned: torch.Tensor, axis: int) -> torch.Tensor:
    """The paper's score: signed cosine of every neuron (row if axis=0, column if axis=1), in fp32.

    Kept as `score.form=fp32` to reproduce the paper and to measure what precision changes; it
    cannot resolve probe-sized changes (module docstring)."""
    _check_pair(base, tuned)
    base, tuned = base.float(), tuned.float()
    reduce_dim = 1 - axis
    dot = (base * tuned).sum(dim=reduce_dim)
    norms = torch.linalg.vector_norm(base, dim=reduce_dim) * torch.linalg.vector_norm(tuned, dim=reduce_dim)
    # A neuron that is all zeros in either model has no direction: call it unchanged.
    return torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(dot))


def neuron_change(base: torch.Tensor, tuned: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine, 1 - cosine) of every neuron in float64, the change accurate to ~1e-15 relative.

    With w the base neuron and Δ = tuned - w (exact in float64 for fp32 or bf16 weights):
    1 - cos = sin² / (1 + cos), and sin² = |Δ⊥|² / |w + Δ|² where Δ⊥ = Δ - (w·Δ / |w|²) w is the part
    of Δ orthogonal to w. Δ⊥ is formed elementwise, so nothing cancels (|w|²|Δ|² - (w·Δ)² would, when
    Δ is nearly parallel to w). For cos <= 0 the plain 1 - cos is already exact. Cost: two float64
    copies of the matrix (neurons as contiguous rows) and five passes over them.
    """
    _check_pair(base, tuned)
    if axis == 1:  # columns as rows: every reduction below runs over contiguous memory
        base, tuned = base.T, tuned.T
    w = base.to(torch.float64, memory_format=torch.contiguous_format)
    delta = tuned.to(torch.float64, memory_format=torch.contiguous_format, copy=True)  # updated in place below
    w_sq = torch.linalg.vecdot(w, w)
    tuned_sq = torch.linalg.vecdot(delta, delta)  # still the tuned neuron here
    delta.sub_(w)
    w_dot_delta = torch.linalg.vecdot(w, delta)
    has_direction = (w_sq > 0) & (tuned_sq > 0)  # an all-zero neuron has none: call it unchanged
    safe_w_sq = torch.where(has_direction, w_sq, torch.ones_like(w_sq))
    safe_tuned_sq = torch.where(has_direction, tuned_sq, torch.ones_like(tuned_sq))
    orthogonal = delta.addcmul_(w, (-w_dot_delta / safe_w_sq).unsqueeze(1))
    sin_sq = torch.linalg.vecdot(orthogonal, orthogonal) / safe_tuned_sq
    cosine = ((w_sq + w_dot_delta) / torch.sqrt(safe_w_sq * safe_tuned_sq)).clamp(-1.0, 1.0)
    change = torch.where(cosine > 0, sin_sq / (1.0 + cosine), 1.0 - cosine)
    return torch.where(has_direction, cosine, 1.0), torch.where(has_direction, change, 0.0)


def score_pair(base: torch.Tensor, tuned: torch.Tensor, axis: int, form: str = "stable") -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine, change) per neuron as float64, by `form`: "stable" (default) or the paper's "fp32"."""
    if form == "stable":
        return neuron_change(base, tuned, axis)
    if form == "fp32":
        cosine = cosine_per_neuron(base, tuned, axis)
        return cosine.double(), (1.0 - cosine).double()  # the change as fp32 resolves it
    raise ValueError(f"unknown score form {form!r}; choose one of {SCORE_FORMS}")


class CheckpointReader:
    """Reads single tensors lazily from a safetensors checkpoint (one file or a sharded index)."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            check_safetensors_in(model_dir, set(weight_map.values()))
            self._file_of = {name: model_dir / shard for name, shard in weight_map.items()}
        else:
            single = model_dir / "model.safetensors"
            if not single.is_file():
                raise FileNotFoundError(f"{model_dir}: no model.safetensors or its index")
            check_safetensors(single)
            with safe_open(single, framework="pt") as handle:
                self._file_of = {name: single for name in handle.keys()}

    def names(self) -> list[str]:
        return list(self._file_of)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._file_of:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        with safe_open(self._file_of[name], framework="pt") as handle:
            return handle.get_tensor(name)


def iter_neuron_scores(
    load_base: Callable[[str], torch.Tensor],
    load_tuned: Callable[[str], torch.Tensor],
    layout: DecoderLayout,
    kinds: list[NeuronKind],
    device: torch.device | str = "cpu",
    form: str = "stable",
) -> Iterator[tuple[int, NeuronKind, torch.Tensor, torch.Tensor]]:
    """Yield (layer, kind, cosine, change) one weight matrix at a time, so at most one pair is in memory."""
    for layer in range(layout.num_layers):
        for kind in kinds:
            name = layout.weight_name(layer, kind)
            cosine, change = score_pair(load_base(name).to(device), load_tuned(name).to(device), kind.axis, form)
            yield layer, kind, cosine.cpu(), change.cpu()


def score_neurons(base_dir: Path, tuned_dir: Path, kinds: list[str], device: str = "cpu", form: str = "stable") -> pd.DataFrame:
    """Score every candidate neuron of base vs tuned: one row per neuron (layer, kind, index, cosine, change)."""
    import pandas as pd  # scoring only: the adapter and masks need no pandas

    if form not in SCORE_FORMS:
        raise ValueError(f"unknown score form {form!r}; choose one of {SCORE_FORMS}")
    base, tuned = CheckpointReader(base_dir), CheckpointReader(tuned_dir)
    layout = DecoderLayout.find(base.names())
    if DecoderLayout.find(tuned.names()) != layout:
        raise ValueError(f"{base_dir} and {tuned_dir} have different decoder layouts")
    frames = []
    for layer, kind, cosine, change in iter_neuron_scores(base.get, tuned.get, layout, resolve_kinds(kinds), device, form):
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "kind": kind.name,
                    "index": torch.arange(len(cosine)).numpy(),
                    "cosine": cosine.numpy(),
                    "change": change.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def score_resolution(scores: pd.DataFrame) -> dict[str, float | int]:
    """How finely the scores resolve the ranking: distinct changes and quantiles of 1 - cosine."""
    change = scores["change"]
    return {
        "distinct_changes": int(change.nunique()),
        **{f"change_q{q:g}": float(change.quantile(q / 100)) for q in (0, 1, 50, 99, 100)},
    }
