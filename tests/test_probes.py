"""The cheap probes (`probe.kind`): they change only the candidate matrices, cost optimizer state for
those alone (or LoRA's), and save a whole model that the score stage reads like the full probe's."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import random_batch
from safetensors.torch import load_file

from neft.methods import candidate_matrices, setup_method
from neft.neurons import score_neurons
from neft.training import TrainSettings, train

CANDIDATES = ("mlp.up_proj.weight", "mlp.down_proj.weight")


def probe_and_save(model, method, tmp_path, **options):
    model.save_pretrained(tmp_path / "base")
    trainable = setup_method(method, model, kinds=("in", "out"), **options)
    batches = (random_batch(model.config.vocab_size, seed=step) for step in itertools.count())
    result = train(trainable.model, trainable.parameters, batches, TrainSettings(steps=3, learning_rate=1e-2))
    trainable.save(tmp_path / "probe")
    return trainable, result


@pytest.mark.parametrize(("method", "options"), [("probe_matrices", {}), ("probe_lora", {"probe_rank": 4})])
def test_a_cheap_probe_changes_only_the_candidate_matrices_and_scores_like_a_full_one(tiny_model, tmp_path, method, options):
    trainable, result = probe_and_save(tiny_model, method, tmp_path, **options)
    base, probe = load_file(tmp_path / "base/model.safetensors"), load_file(tmp_path / "probe/model.safetensors")
    assert probe.keys() == base.keys(), "a whole model, LoRA merged: nothing for the score stage to know"
    changed = {name for name in base if not torch.equal(base[name], probe[name])}
    assert changed == {f"model.layers.{layer}.{matrix}" for layer in range(2) for matrix in CANDIDATES}
    scores = score_neurons(tmp_path / "base", tmp_path / "probe", ["in", "out"])
    assert len(scores) == 2 * 2 * tiny_model.config.intermediate_size and scores["change"].gt(0).all()
    # AdamW keeps two fp32 moments per trained weight, and nothing for the rest.
    assert result.optimizer_state_bytes == 2 * 4 * trainable.trainable_parameters + 4 * len(trainable.parameters)


def test_the_matrices_probe_trains_exactly_the_candidate_weights(tiny_model):
    trainable = setup_method("probe_matrices", tiny_model, kinds=("in", "out"))
    assert {id(p) for p in trainable.parameters} == {id(p) for p in candidate_matrices(tiny_model, ("in", "out"))}
    assert {id(p) for p in tiny_model.parameters() if p.requires_grad} == {id(p) for p in trainable.parameters}
    share = trainable.trainable_parameters / sum(p.numel() for p in tiny_model.parameters())
    assert 0 < share < 1
