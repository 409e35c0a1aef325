"""Neuron analysis numbers on hand-made inputs with known answers."""

import numpy as np
import pytest
import torch
from conftest import random_batch

from neft.analysis import (
    delta_rank_groups,
    descending_ranks,
    jaccard,
    jaccard_matrix,
    layer_mean_hidden_states,
    neuron_utilisation,
    trained_flags,
)
from neft.masks import ModelShape, NeuronMask
from neft.neurons import NEURON_KINDS, DecoderLayout

SHAPE = ModelShape(num_layers=2, d_model=4, d_ff=3, total_parameters=100)


def test_jaccard_of_known_masks():
    a = NeuronMask(SHAPE, 0.1, indices={"in": {0: [0, 1]}, "out": {1: [2]}})
    b = NeuronMask(SHAPE, 0.1, indices={"in": {0: [1]}, "out": {1: [2], 0: [0]}})
    assert jaccard(a, b) == pytest.approx(2 / 4)
    assert jaccard(a, a) == 1.0


def test_jaccard_matrix_is_symmetric_with_ones_on_the_diagonal():
    a = NeuronMask(SHAPE, 0.1, indices={"in": {0: [0, 1]}, "out": {1: [2]}})
    b = NeuronMask(SHAPE, 0.1, indices={"in": {0: [1]}, "out": {1: [2], 0: [0]}})
    c = NeuronMask(SHAPE, 0.1, indices={"in": {1: [0]}})
    matrix = jaccard_matrix({"seed0": a, "seed1": b, "seed2": c})
    assert list(matrix.index) == list(matrix.columns) == ["seed0", "seed1", "seed2"]
    assert matrix.loc["seed0", "seed1"] == matrix.loc["seed1", "seed0"] == pytest.approx(2 / 4)
    assert matrix.loc["seed0", "seed2"] == 0.0
    assert np.diag(matrix.to_numpy()).tolist() == [1.0, 1.0, 1.0]


def test_descending_ranks_are_a_permutation_with_stable_ties():
    assert descending_ranks(np.array([0.1, 0.9, 0.5, 0.9])).tolist() == [3, 0, 2, 1]


def test_delta_rank_groups_on_a_known_permutation():
    before = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])  # ranks 0..5
    after = np.array([0.4, 0.8, 0.7, 0.6, 0.5, 0.9])  # neurons 0 and 5 swap: delta +5 and -5
    trained = np.array([True, False, False, False, False, False])
    groups = delta_rank_groups(before, after, trained, threshold=5)
    assert groups["strongly_affected"] == 2
    assert groups["suppressed"] == 1  # neuron 0 fell from rank 0 to 5
    assert groups["indirectly_affected"] == 1  # neuron 5 moved but was not trained
    assert groups["mean_abs_delta_rank"] == pytest.approx(10 / 6)
    assert groups["mean_abs_delta_rank_trained"] == 5.0


def test_trained_flags_follow_layer_major_order():
    mask = NeuronMask(SHAPE, 0.1, indices={"in": {1: [0, 2]}})
    assert trained_flags(mask, "in").tolist() == [False, False, False, True, False, True]


def test_utilisation_is_one_for_a_neuron_aligned_with_a_later_layer(tiny_model):
    batches = [random_batch(tiny_model.config.vocab_size)]
    means = layer_mean_hidden_states(tiny_model, batches)
    assert means.shape == (tiny_model.config.num_hidden_layers, tiny_model.config.hidden_size)
    with torch.no_grad():
        tiny_model.get_parameter(DecoderLayout.of(tiny_model).weight_name(0, NEURON_KINDS["in"]))[4] = 3 * means[1] + 2  # Pearson r = 1
    utilisation = neuron_utilisation(tiny_model, means, "in")
    assert utilisation.shape == (2 * tiny_model.config.intermediate_size,)
    assert utilisation[4].item() == pytest.approx(1.0, abs=1e-5)
    assert (utilisation <= 1 + 1e-6).all()


def test_layer_means_ignore_padding(tiny_model):
    batch = random_batch(tiny_model.config.vocab_size, batch=1)
    padded = {key: torch.cat([value, value[:, :3]], dim=1) for key, value in batch.items()}
    padded["attention_mask"][:, -3:] = 0
    torch.testing.assert_close(
        layer_mean_hidden_states(tiny_model, [padded]), layer_mean_hidden_states(tiny_model, [batch]), rtol=1e-4, atol=1e-5
    )
