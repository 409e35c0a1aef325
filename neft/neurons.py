"""Neurons of a Llama-style MLP and how much a probe fine-tune changed each of them.

For `down(act(gate(x)) * up(x))`, hidden unit j of layer i gives two selection units, each a
vector of d_model weights: the "in" neuron (row j of up_proj) and the "out" neuron (column j of
down_proj). Optionally "gate" (row j of gate_proj). Score = signed cosine similarity between the
neuron in the base model and in the probe model, in fp32: lower means changed more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from safetensors import safe_open


@dataclass(frozen=True)
class NeuronKind:
    """Which weight matrix holds this kind of neuron, and along which axis a neuron lies."""

    name: str
    module: str  # module path inside a decoder layer
    axis: int  # 0: a neuron is a row of the weight; 1: a column


NEURON_KINDS = {
    "in": NeuronKind("in", "mlp.up_proj", axis=0),
    "out": NeuronKind("out", "mlp.down_proj", axis=1),
    "gate": NeuronKind("gate", "mlp.gate_proj", axis=0),
}
DEFAULT_KINDS = ("in", "out")
LAYER_PREFIX = "model.layers"


def resolve_kinds(kinds: list[str] | tuple[str, ...]) -> list[NeuronKind]:
    unknown = sorted(set(kinds) - set(NEURON_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown neuron kind(s) {unknown}; choose from {sorted(NEURON_KINDS)}")
    return [NEURON_KINDS[name] for name in kinds]


def weight_name(layer: int, kind: NeuronKind) -> str:
    return f"{LAYER_PREFIX}.{layer}.{kind.module}.weight"


def module_name(layer: int, kind: NeuronKind) -> str:
    return f"{LAYER_PREFIX}.{layer}.{kind.module}"


def cosine_per_neuron(base: torch.Tensor, tuned: torch.Tensor, axis: int) -> torch.Tensor:
    """Signed cosine similarity of every neuron (row if axis=0, column if axis=1), in fp32."""
    if base.shape != tuned.shape:
        raise ValueError(f"shape mismatch: base {tuple(base.shape)} vs tuned {tuple(tuned.shape)}")
    base, tuned = base.float(), tuned.float()
    reduce_dim = 1 - axis
    dot = (base * tuned).sum(dim=reduce_dim)
    norms = torch.linalg.vector_norm(base, dim=reduce_dim) * torch.linalg.vector_norm(tuned, dim=reduce_dim)
    # A neuron that is all zeros in either model has no direction: call it unchanged.
    return torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(dot))


class CheckpointReader:
    """Reads single tensors lazily from a safetensors checkpoint (one file or a sharded index)."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: model_dir / shard for name, shard in weight_map.items()}
        else:
            single = model_dir / "model.safetensors"
            if not single.is_file():
                raise FileNotFoundError(f"{model_dir}: no model.safetensors or its index")
            with safe_open(single, framework="pt") as handle:
                self._file_of = {name: single for name in handle.keys()}

    def names(self) -> list[str]:
        return list(self._file_of)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._file_of:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        with safe_open(self._file_of[name], framework="pt") as handle:
            return handle.get_tensor(name)


def count_layers(reader: CheckpointReader) -> int:
    layers = {int(name.split(".")[2]) for name in reader.names() if name.startswith(LAYER_PREFIX + ".")}
    if not layers:
        raise ValueError(f"no '{LAYER_PREFIX}.N' tensors: not a Llama-style checkpoint")
    return max(layers) + 1


def iter_neuron_scores(
    load_base: Callable[[str], torch.Tensor],
    load_tuned: Callable[[str], torch.Tensor],
    num_layers: int,
    kinds: list[NeuronKind],
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, NeuronKind, torch.Tensor]]:
    """Yield (layer, kind, scores) one weight matrix at a time, so at most one pair is in memory."""
    for layer in range(num_layers):
        for kind in kinds:
            name = weight_name(layer, kind)
            scores = cosine_per_neuron(load_base(name).to(device), load_tuned(name).to(device), kind.axis)
            yield layer, kind, scores.cpu()


def score_neurons(base_dir: Path, tuned_dir: Path, kinds: list[str], device: str = "cpu") -> pd.DataFrame:
    """Score every candidate neuron of base vs tuned: one row per neuron (layer, kind, index, score)."""
    base, tuned = CheckpointReader(base_dir), CheckpointReader(tuned_dir)
    num_layers = count_layers(base)
    if count_layers(tuned) != num_layers:
        raise ValueError(f"{base_dir} and {tuned_dir} have different numbers of layers")
    frames = []
    for layer, kind, scores in iter_neuron_scores(base.get, tuned.get, num_layers, resolve_kinds(kinds), device):
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "kind": kind.name,
                    "index": torch.arange(len(scores)).numpy(),
                    "score": scores.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
