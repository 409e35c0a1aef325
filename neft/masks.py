"""Selecting the k most-changed neurons over one global pool, and the mask file that records them.

ratio = k * d_model / total_parameters (the paper's budget). The pool is every candidate neuron of
every layer and kind together; we keep exactly the k most changed neurons (largest `1 - cosine`,
i.e. lowest cosine), ties broken by (layer, kind, index) so the same scores always give the same
mask. How many neurons the tie-break decided is counted (`cutoff_ties`): with scores that resolve
the probe's changes it should be none.

Two controls use the same budget and the same pool: `reversed` keeps the k LEAST changed neurons
(the paper found it hurts) and `random` a seeded uniform sample (the paper never tried it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neft.errors import UserError
from neft.neurons import NEURON_KINDS, DecoderLayout

if TYPE_CHECKING:  # scores are DataFrames; the adapter's masks need no pandas
    import pandas as pd

MASK_FORMAT = "neft-mask/v1"
STRATEGIES = ("cosine", "reversed", "random")


class MaskError(UserError):
    """A budget that cannot be met, or a mask that does not fit the model."""


@dataclass(frozen=True)
class ModelShape:
    """What a mask must agree with: the model's layer count, widths and size."""

    num_layers: int
    d_model: int
    d_ff: int
    total_parameters: int

    @classmethod
    def of(cls, model: torch.nn.Module, layout: DecoderLayout | None = None) -> ModelShape:
        layout = layout or DecoderLayout.of(model)
        up_proj = model.get_submodule(layout.module_name(0, NEURON_KINDS["in"]))
        return cls(
            num_layers=layout.num_layers,
            d_model=up_proj.in_features,
            d_ff=up_proj.out_features,
            total_parameters=sum(p.numel() for p in model.parameters()),
        )


@dataclass
class NeuronMask:
    """Selected neuron indices per (kind, layer); each selected neuron trains d_model weights."""

    shape: ModelShape
    ratio: float
    strategy: str = "cosine"
    indices: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    # Fingerprints (neft.provenance) of the base model and the probe whose scores chose the neurons.
    made_from: dict[str, str] = field(default_factory=dict)

    @property
    def num_neurons(self) -> int:
        return sum(len(ids) for per_layer in self.indices.values() for ids in per_layer.values())

    @property
    def trainable_parameters(self) -> int:
        return self.num_neurons * self.shape.d_model

    def layer_indices(self, kind: str, layer: int) -> list[int]:
        return self.indices.get(kind, {}).get(layer, [])


def neurons_for_ratio(ratio: float, shape: ModelShape, pool_size: int) -> int:
    """k such that k * d_model is `ratio` of all parameters; an error if the pool cannot hold it."""
    if not 0 < ratio < 1:
        raise MaskError(f"ratio must be in (0, 1), got {ratio}")
    k = round(ratio * shape.total_parameters / shape.d_model)
    if k < 1:
        raise MaskError(f"ratio {ratio} selects no neuron (one neuron = {shape.d_model} parameters)")
    if k > pool_size:
        max_ratio = pool_size * shape.d_model / shape.total_parameters
        raise MaskError(
            f"ratio {ratio} needs {k} neurons but the candidate pool has only {pool_size} "
            f"(largest possible ratio with these neuron kinds: {max_ratio:.4f})"
        )
    return k


def selection_order(scores: pd.DataFrame, key: np.ndarray) -> np.ndarray:
    """Row positions by ascending `key`; ties go to the earlier (layer, kind, index)."""
    kind_order = scores["kind"].map({name: rank for rank, name in enumerate(NEURON_KINDS)})
    # np.lexsort sorts by the last key first: key, then layer, kind, index.
    return np.lexsort((scores["index"].to_numpy(), kind_order.to_numpy(), scores["layer"].to_numpy(), key))


def select_lowest_neurons(scores: pd.DataFrame, k: int, key: np.ndarray) -> pd.DataFrame:
    """Exactly the k rows with the lowest `key`; ties go to the earlier (layer, kind, index)."""
    return scores.iloc[selection_order(scores, key)[:k]]


def selection_key(scores: pd.DataFrame, strategy: str, seed: int) -> np.ndarray:
    """What the k lowest values are taken of: minus the change (NeFT), the change, or seeded noise."""
    if strategy == "cosine":
        return -scores["change"].to_numpy()
    if strategy == "reversed":
        return scores["change"].to_numpy()
    if strategy == "random":
        return np.random.default_rng(seed).random(len(scores))
    raise MaskError(f"unknown mask strategy {strategy!r}; choose one of {STRATEGIES}")


@dataclass(frozen=True)
class CutoffTies:
    """How well the scores resolve the k-th place: the neurons that share its key, and how many of the
    selected ones position rather than score chose (nonzero only when the tied group straddles k)."""

    cutoff_key: float
    tied_at_cutoff: int
    decided_by_tiebreak: int


def cutoff_ties(key: np.ndarray, k: int) -> CutoffTies:
    cutoff = np.partition(key, k - 1)[k - 1]
    tied = int((key == cutoff).sum())
    # Everything below the cutoff is selected; of the tied group, k - (#below) are.
    selected_tied = k - int((key < cutoff).sum())
    return CutoffTies(float(cutoff), tied, selected_tied if selected_tied < tied else 0)


def mask_from_selection(selection: pd.DataFrame, shape: ModelShape, ratio: float, strategy: str) -> NeuronMask:
    indices: dict[str, dict[int, list[int]]] = {}
    for (kind, layer), group in selection.groupby(["kind", "layer"], sort=True):
        indices.setdefault(str(kind), {})[int(layer)] = sorted(int(i) for i in group["index"])
    return NeuronMask(shape=shape, ratio=ratio, strategy=strategy, indices=indices)


def build_mask(scores: pd.DataFrame, shape: ModelShape, ratio: float, strategy: str = "cosine", seed: int = 0) -> NeuronMask:
    """The mask for `ratio` under `strategy` (cosine = NeFT; reversed and random are controls)."""
    return build_mask_with_ties(scores, shape, ratio, strategy, seed)[0]


def build_mask_with_ties(scores: pd.DataFrame, shape: ModelShape, ratio: float, strategy: str = "cosine",
                         seed: int = 0) -> tuple[NeuronMask, CutoffTies]:
    """`build_mask`, and how many of its neurons the tie-break at the cutoff decided."""
    key = selection_key(scores, strategy, seed)
    k = neurons_for_ratio(ratio, shape, pool_size=len(scores))
    return mask_from_selection(select_lowest_neurons(scores, k, key), shape, ratio, strategy), cutoff_ties(key, k)


def validate_mask(mask: NeuronMask, shape: ModelShape) -> None:
    """A mask made for another model must fail here, not deep inside training."""
    if mask.shape.num_layers != shape.num_layers or mask.shape.d_model != shape.d_model or mask.shape.d_ff != shape.d_ff:
        raise MaskError(f"mask was made for {mask.shape}, but the model is {shape}")
    for kind, per_layer in mask.indices.items():
        if kind not in NEURON_KINDS:
            raise MaskError(f"mask has unknown neuron kind {kind!r}")
        for layer, ids in per_layer.items():
            if not 0 <= layer < shape.num_layers:
                raise MaskError(f"mask names layer {layer}; the model has {shape.num_layers}")
            if ids and not (0 <= min(ids) and max(ids) < shape.d_ff):
                raise MaskError(f"mask index out of range in {kind} layer {layer} (d_ff = {shape.d_ff})")
            if len(set(ids)) != len(ids):
                raise MaskError(f"mask repeats an index in {kind} layer {layer}")


def mask_to_json(mask: NeuronMask) -> dict[str, Any]:
    return {
        "format": MASK_FORMAT,
        "ratio": mask.ratio,
        "strategy": mask.strategy,
        "num_neurons": mask.num_neurons,
        "model": dict(vars(mask.shape)),  # a copy: vars() is the shape's own __dict__
        "indices": {kind: {str(layer): ids for layer, ids in per_layer.items()} for kind, per_layer in mask.indices.items()},
        "made_from": mask.made_from,
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mask_from_json(data: Any, source: str = "mask file") -> NeuronMask:
    """The mask `data` (as json.loads gives it) records; anything malformed is a MaskError naming
    `source` and the key, never a traceback or a silently different mask (7.9 is not neuron 7)."""
    fix = "rerun the mask stage (dvc repro mask) to write it again"

    def bad(key: str, problem: str) -> MaskError:
        return MaskError(f"{source}: {key} {problem}; {fix}")

    if not isinstance(data, dict):
        raise MaskError(f"{source}: expected a JSON object, got a {type(data).__name__}; {fix}")
    if data.get("format") != MASK_FORMAT:
        raise MaskError(f"{source}: not a {MASK_FORMAT} file (format = {data.get('format')!r}); {fix}")
    for key in ("model", "ratio", "indices", "num_neurons"):
        if key not in data:
            raise bad(f"key {key!r}", "is missing")
    model = data["model"]
    fields = ("num_layers", "d_model", "d_ff", "total_parameters")
    if not isinstance(model, dict) or set(model) != set(fields):
        raise bad("'model'", f"must be an object with exactly the keys {', '.join(fields)}")
    for name in fields:
        if not _is_int(model[name]) or model[name] < 1:
            raise bad(f"'model.{name}' = {model[name]!r}", "must be an integer >= 1")
    if not _is_number(data["ratio"]):
        raise bad(f"'ratio' = {data['ratio']!r}", "must be a number")
    strategy = data.get("strategy", "cosine")
    if not isinstance(strategy, str):
        raise bad(f"'strategy' = {strategy!r}", "must be a string")
    made_from = data.get("made_from") or {}
    if not isinstance(made_from, dict) or not all(isinstance(value, str) for value in made_from.values()):
        raise bad("'made_from'", "must be an object of fingerprint strings")
    if not isinstance(data["indices"], dict):
        raise bad("'indices'", f"must be an object (kind -> layer -> neuron indices), got a {type(data['indices']).__name__}")
    indices: dict[str, dict[int, list[int]]] = {}
    for kind, per_layer in data["indices"].items():
        if not isinstance(per_layer, dict):
            raise bad(f"'indices.{kind}'", "must be an object (layer -> neuron indices)")
        indices[kind] = {}
        for layer, ids in per_layer.items():
            if not (isinstance(layer, str) and layer.isdecimal()):
                raise bad(f"'indices.{kind}' layer {layer!r}", "must be a layer number")
            if not isinstance(ids, list):
                raise bad(f"'indices.{kind}.{layer}'", "must be a list of neuron indices")
            for position, index in enumerate(ids):
                if not _is_int(index):
                    raise bad(f"'indices.{kind}.{layer}'[{position}] = {index!r}", "must be an integer neuron index")
            indices[kind][int(layer)] = list(ids)
    if not _is_int(data["num_neurons"]):
        raise bad(f"'num_neurons' = {data['num_neurons']!r}", "must be an integer")
    mask = NeuronMask(shape=ModelShape(**model), ratio=float(data["ratio"]), strategy=strategy, indices=indices,
                      made_from=dict(made_from))
    if mask.num_neurons != data["num_neurons"]:
        raise MaskError(f"{source}: says {data['num_neurons']} neurons but lists {mask.num_neurons}; {fix}")
    return mask


def save_mask(mask: NeuronMask, path: Path) -> None:
    Path(path).write_text(json.dumps(mask_to_json(mask)))


def load_mask(path: Path) -> NeuronMask:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MaskError(f"{path}: cannot read mask ({error})") from None
    return mask_from_json(data, str(path))


def summarize_mask(mask: NeuronMask) -> dict[str, Any]:
    """Counts for humans and plots: k, parameters, share of the model, neurons per layer and kind."""
    per_layer = {
        kind: [len(mask.layer_indices(kind, layer)) for layer in range(mask.shape.num_layers)]
        for kind in sorted(mask.indices)
    }
    return {
        "ratio": mask.ratio,
        "strategy": mask.strategy,
        "num_neurons": mask.num_neurons,
        "trainable_parameters": mask.trainable_parameters,
        "total_parameters": mask.shape.total_parameters,
        "trainable_percent": 100 * mask.trainable_parameters / mask.shape.total_parameters,
        "neurons_per_kind": {kind: sum(counts) for kind, counts in per_layer.items()},
        "neurons_per_layer": per_layer,
    }
