"""Descriptive neuron analysis: where the mask falls, how masks overlap, and the paper's
utilisation-rank comparison between two models (e.g. base vs NeFT).

Utilisation (paper, Section 5): average each layer's output hidden state over tokens and test
sentences (one d_model vector per layer); a neuron's utilisation is its largest |Pearson r| with
the mean hidden state of its own or any later layer. Neurons of a kind are ranked by it
(descending, rank 0 = most utilised); delta rank = rank in model B - rank in model A.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from neft.masks import NeuronMask
from neft.neurons import NEURON_KINDS, DecoderLayout


def mask_members(mask: NeuronMask) -> set[tuple[str, int, int]]:
    return {(kind, layer, index) for kind, per_layer in mask.indices.items() for layer, ids in per_layer.items() for index in ids}


def jaccard(first: NeuronMask, second: NeuronMask) -> float:
    """|A & B| / |A | B| of two masks' neuron sets (the paper's Table 6 overlap)."""
    a, b = mask_members(first), mask_members(second)
    return len(a & b) / len(a | b) if a | b else 1.0


def jaccard_matrix(masks: dict[str, NeuronMask]) -> pd.DataFrame:
    """Pairwise Jaccard overlap of named masks (e.g. from different seeds' probes), as a square table."""
    names = list(masks)
    return pd.DataFrame([[jaccard(masks[row], masks[column]) for column in names] for row in names], index=names, columns=names)


@torch.no_grad()
def layer_mean_hidden_states(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[num_layers, d_model]: each decoder layer's output, averaged over real tokens, then sentences."""
    model.eval()
    device = next(model.parameters()).device
    sentence_means = []
    for batch in batches:
        mask = batch["attention_mask"].to(device)
        outputs = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True)
        layers = torch.stack(outputs.hidden_states[1:]).float()  # drop the embedding output
        weights = mask[None, :, :, None].float()
        sentence_means.append((layers * weights).sum(2) / weights.sum(2))  # [layers, batch, d_model]
    return torch.cat(sentence_means, dim=1).mean(dim=1)


def neuron_vectors(model: nn.Module, kind: str, layer: int) -> torch.Tensor:
    """[d_ff, d_model]: every neuron of one kind in one layer as a d_model vector."""
    spec = NEURON_KINDS[kind]
    weight = model.get_parameter(DecoderLayout.of(model).weight_name(layer, spec)).detach().float()
    return weight if spec.axis == 0 else weight.T


def _standardise(vectors: torch.Tensor) -> torch.Tensor:
    centred = vectors - vectors.mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def neuron_utilisation(model: nn.Module, layer_means: torch.Tensor, kind: str) -> torch.Tensor:
    """[num_layers * d_ff] utilisation of every neuron of `kind`, layer-major order."""
    num_layers = layer_means.shape[0]
    targets = _standardise(layer_means)
    scores = []
    for layer in range(num_layers):
        correlations = (_standardise(neuron_vectors(model, kind, layer)) @ targets.T).abs()  # [d_ff, layers]
        scores.append(correlations[:, layer:].max(dim=1).values)  # own layer or later
    return torch.cat(scores)


def descending_ranks(values: np.ndarray) -> np.ndarray:
    """Rank 0 for the largest value; ties by position, so ranks are a permutation."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    return ranks


def delta_rank_groups(utilisation_a: np.ndarray, utilisation_b: np.ndarray, trained: np.ndarray, threshold: int) -> dict[str, Any]:
    """The paper's groups for one neuron kind, from utilisation in model A (before) and B (after).

    strongly affected: |rank_B - rank_A| >= threshold; suppressed: strongly affected and ranked
    lower in B (utilisation dropped); indirectly affected: strongly affected but not trained."""
    delta = descending_ranks(utilisation_b) - descending_ranks(utilisation_a)
    strong = np.abs(delta) >= threshold
    return {
        "neurons": int(len(delta)),
        "threshold": int(threshold),
        "strongly_affected": int(strong.sum()),
        "suppressed": int((strong & (delta > 0)).sum()),
        "indirectly_affected": int((strong & ~trained).sum()),
        "mean_abs_delta_rank": float(np.abs(delta).mean()),
        "mean_abs_delta_rank_trained": float(np.abs(delta[trained]).mean()) if trained.any() else 0.0,
        "mean_abs_delta_rank_untrained": float(np.abs(delta[~trained]).mean()) if (~trained).any() else 0.0,
    }


def trained_flags(mask: NeuronMask, kind: str) -> np.ndarray:
    """Boolean [num_layers * d_ff] in the same layer-major order as `neuron_utilisation`."""
    flags = np.zeros(mask.shape.num_layers * mask.shape.d_ff, dtype=bool)
    for layer, ids in mask.indices.get(kind, {}).items():
        flags[layer * mask.shape.d_ff + np.asarray(ids, dtype=np.int64)] = True
    return flags


def plot_score_histogram(scores: pd.DataFrame, cutoff: float, out_path: str) -> None:
    """Distribution of the change 1 - cosine (log scale) per kind, with the mask's cutoff change marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    change = scores["change"].clip(lower=1e-18)
    bins = np.logspace(np.log10(change.min()), np.log10(change.max()), 60)
    for kind, part in scores.groupby("kind"):
        axis.hist(change[part.index], bins=bins, alpha=0.6, label=f"{kind} neurons")
    axis.axvline(max(cutoff, 1e-18), color="black", linestyle="--", label="mask cutoff (selected: right of it)")
    axis.set_xscale("log")
    axis.set_xlabel("1 - cosine(base, probe)")
    axis.set_ylabel("neurons")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)


def plot_selection_heatmap(mask: NeuronMask, out_path: str) -> None:
    """Share of each layer's neurons that the mask selects, in vs out."""
    kinds = sorted(mask.indices)
    grid = np.array([[len(mask.layer_indices(kind, layer)) / mask.shape.d_ff for layer in range(mask.shape.num_layers)] for kind in kinds])
    figure, axis = plt.subplots(figsize=(10, 1.2 + 0.5 * len(kinds)))
    image = axis.imshow(grid, aspect="auto", cmap="viridis")
    axis.set_yticks(range(len(kinds)), [f"{kind}" for kind in kinds])
    axis.set_xlabel("layer")
    axis.set_title("Fraction of each layer's neurons selected")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
