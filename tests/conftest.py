"""Shared fixtures: a tiny random-init Llama (2 layers, small dims) and masks for it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from neft.masks import ModelShape, NeuronMask  # noqa: E402
from neft.models import build_random_llama, byte_level_tokenizer  # noqa: E402

TINY_ARCHITECTURE = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


@pytest.fixture
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return build_random_llama(TINY_ARCHITECTURE, vocab_size=len(tokenizer), seed=0)


def random_mask(model: torch.nn.Module, per_matrix: int, seed: int = 0) -> NeuronMask:
    """A mask with `per_matrix` random neurons in each (kind, layer)."""
    shape = ModelShape.of(model)
    generator = torch.Generator().manual_seed(seed)
    indices = {
        kind: {layer: sorted(torch.randperm(shape.d_ff, generator=generator)[:per_matrix].tolist()) for layer in range(shape.num_layers)}
        for kind in ("in", "out")
    }
    return NeuronMask(shape=shape, ratio=per_matrix * 2 * shape.num_layers * shape.d_model / shape.total_parameters, indices=indices)


def random_batch(vocab_size: int, batch: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
