"""The cheap probes (`probe.kind`): they change only the candidate matrices, cost optimizer state for
those alone (or LoRA's, or none for the gradient probe), and save a whole model that the score stage
reads like the full probe's."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import inside, random_batch
from safetensors.torch import load_file

from neft.methods import SetupInputs, candidate_matrices, setup_method
from neft.neurons import NEURON_KINDS, DecoderLayout, score_neurons
from neft.training import TrainSettings, accumulate_gradients, causal_lm_loss, train
from stages.train import train as train_stage

CANDIDATES = ("mlp.up_proj.weight", "mlp.down_proj.weight")


def probe_and_save(model, method, tmp_path, **options):
    model.save_pretrained(tmp_path / "base")
    trainable = setup_method(method, model, SetupInputs(kinds=("in", "out"), **options))
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
    trainable = setup_method("probe_matrices", tiny_model, SetupInputs(kinds=("in", "out")))
    assert {id(p) for p in trainable.parameters} == {id(p) for p in candidate_matrices(tiny_model, ("in", "out"))}
    assert {id(p) for p in tiny_model.parameters() if p.requires_grad} == {id(p) for p in trainable.parameters}
    share = trainable.trainable_parameters / sum(p.numel() for p in tiny_model.parameters())
    assert 0 < share < 1


GRADIENT_BATCHES = 3
STEP_SIZE = 0.5


def gradient_probe_and_save(model, tmp_path):
    model.save_pretrained(tmp_path / "base")
    trainable = setup_method("probe_gradient", model, SetupInputs(kinds=("in", "out"), probe_step_size=STEP_SIZE))
    batches = (random_batch(model.config.vocab_size, seed=step) for step in itertools.count())
    result = accumulate_gradients(trainable.model, trainable.parameters, batches, GRADIENT_BATCHES)
    trainable.save(tmp_path / "probe")
    return trainable, result


def test_gradient_probe_scores_equal_a_dense_autograd_sgd_step(tiny_model, tmp_path):
    """The gradient probe's scores against a direct computation: autograd on every parameter, the
    summed gradient of the same batches, one SGD step, and each neuron's 1 - cosine in float64."""
    base = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    dense = [torch.autograd.grad(causal_lm_loss(tiny_model, random_batch(tiny_model.config.vocab_size, seed=step), None),
                                 list(tiny_model.parameters())) for step in range(GRADIENT_BATCHES)]
    summed = {name: sum(grads[i] for grads in dense).double() for i, (name, _) in enumerate(tiny_model.named_parameters())}
    _, result = gradient_probe_and_save(tiny_model, tmp_path)
    scores = score_neurons(tmp_path / "base", tmp_path / "probe", ["in", "out"]).set_index(["layer", "kind", "index"])
    for layer in range(tiny_model.config.num_hidden_layers):
        for kind in ("in", "out"):
            name, axis = DecoderLayout.of(tiny_model).weight_name(layer, NEURON_KINDS[kind]), NEURON_KINDS[kind].axis
            w = base[name].double() if axis == 0 else base[name].double().T
            stepped = w - STEP_SIZE * (summed[name] if axis == 0 else summed[name].T)
            cosine = (w * stepped).sum(1) / (w.norm(dim=1) * stepped.norm(dim=1))
            torch.testing.assert_close(torch.tensor(scores.loc[(layer, kind), "change"].to_numpy()), 1 - cosine, rtol=1e-3, atol=0)
    with torch.no_grad():
        losses = [float(causal_lm_loss(tiny_model, random_batch(tiny_model.config.vocab_size, seed=step), None))
                  for step in range(GRADIENT_BATCHES)]
    assert result.losses == pytest.approx(losses)


def test_gradient_probe_keeps_gradients_of_the_candidates_only_and_changes_nothing(tiny_model, tmp_path):
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    trainable, result = gradient_probe_and_save(tiny_model, tmp_path)
    with_gradients = {id(p) for p in tiny_model.parameters() if p.grad is not None}
    assert with_gradients == {id(p) for p in candidate_matrices(tiny_model, ("in", "out"))}
    assert result.gradient_bytes == 4 * trainable.trainable_parameters and result.optimizer_state_bytes == 0
    for name, p in tiny_model.named_parameters():
        assert torch.equal(p, before[name]), f"saving stepped {name} in place"
    base, probe = load_file(tmp_path / "base/model.safetensors"), load_file(tmp_path / "probe/model.safetensors")
    changed = {name for name in base if not torch.equal(base[name], probe[name])}
    assert changed == {f"model.layers.{layer}.{matrix}" for layer in range(2) for matrix in CANDIDATES}


def test_gradient_probe_refuses_to_save_without_gradients(tiny_model, tmp_path):
    trainable = setup_method("probe_gradient", tiny_model, SetupInputs(kinds=("in", "out")))
    with pytest.raises(RuntimeError, match="no accumulated gradient"):
        trainable.save(tmp_path / "probe")


def test_the_probe_stage_with_the_gradient_option_writes_a_probe_the_score_stage_reads(project, tmp_path):
    directory, config, _ = project
    shutil.copytree(directory, tmp_path / "project")
    gradient = dataclasses.replace(config, probe=dataclasses.replace(config.probe, kind="gradient"))
    with inside(tmp_path / "project"):
        summary = train_stage("probe", gradient)
        log = pd.read_csv("reports/train/probe/plots/metrics/loss.tsv", sep="\t")
        scores = score_neurons(Path("artifacts/model"), Path("artifacts/probe"), ["in", "out"])
    assert summary["steps"] == config.probe.steps == len(log) and summary["optimizer_state_mb"] == 0
    assert summary["best_valid_loss"] is None and summary["probe_step_size"] == config.probe.learning_rate
    assert (scores["change"] > 0).all()
