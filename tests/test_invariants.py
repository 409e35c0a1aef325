"""The method's invariants on the tiny model, in fp32 and under the bf16 autocast the default runs:
what NeFT changes, that its sparse deltas are dense gradient masking, and that the weights a saved
result loads are the trained ones."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_batch, random_mask
from torch import nn

from neft.delta import NeuronDeltaLinear, load_delta
from neft.methods import dense_masked_finetuning, full_finetuning, load_trained_model, neft_finetuning
from neft.neurons import NEURON_KINDS, DecoderLayout
from neft.training import TrainSettings, train

AUTOCAST = pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])


def batches(vocab_size: int, seed: int = 0):
    """Endless distinct random batches, the same sequence for the same seed."""
    index = 0
    while True:
        yield random_batch(vocab_size, batch=4, length=12, seed=1000 * seed + index)
        index += 1


def settings(autocast: torch.dtype | None, steps: int = 4, lr: float = 1e-2) -> TrainSettings:
    # Clipping on, as in the pipeline (max_grad_norm 1.0), and no best-step restore.
    return TrainSettings(steps=steps, learning_rate=lr, max_grad_norm=1.0, autocast_dtype=autocast, keep_best=False)


def selected_flags(mask, kind, layer: int) -> torch.Tensor:
    flags = torch.zeros(mask.shape.d_ff, dtype=torch.bool)
    flags[mask.layer_indices(kind.name, layer)] = True
    return flags


@AUTOCAST
def test_saved_neft_changes_exactly_the_masks_rows_and_columns(tiny_model, tmp_path, autocast):
    tiny_model.save_pretrained(tmp_path / "base")
    base_state = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    mask = random_mask(tiny_model, per_matrix=5)
    trainable = neft_finetuning(tiny_model, mask, "tiny")
    train(trainable.model, trainable.parameters, batches(tiny_model.config.vocab_size), settings(autocast))
    trainable.save(tmp_path / "neft")

    saved = load_delta(tmp_path / "neft")
    layout = DecoderLayout.of(tiny_model)
    for kind in (NEURON_KINDS["in"], NEURON_KINDS["out"]):
        for layer in range(mask.shape.num_layers):
            part = "rows" if kind.axis == 0 else "columns"
            assert saved.modules[layout.module_name(layer, kind)][part].tolist() == mask.layer_indices(kind.name, layer)

    loaded = load_trained_model("neft", tmp_path / "base", tmp_path / "neft").state_dict()
    assert set(loaded) == set(base_state)
    candidates = set()
    for kind in (NEURON_KINDS["in"], NEURON_KINDS["out"]):
        for layer in range(mask.shape.num_layers):
            name = layout.weight_name(layer, kind)
            candidates.add(name)
            before, after = base_state[name], loaded[name]
            if kind.axis == 1:
                before, after = before.T, after.T
            flags = selected_flags(mask, kind, layer)
            assert torch.equal(after[~flags], before[~flags]), f"unselected neurons of {name} moved"
            assert (after[flags] != before[flags]).any(dim=1).all(), f"a selected neuron of {name} did not train"
    for name, tensor in base_state.items():
        if name not in candidates:
            assert torch.equal(loaded[name], tensor), f"{name} is not a candidate matrix but changed"


# Weight updates after 4 clipped AdamW steps at lr 1e-2, deltas vs dense masking. fp32 agrees to
# rounding. Under bf16 autocast both round the same merged weight, but their gradients are summed in
# different orders, and AdamW's sign-like update amplifies that on a few near-zero gradient entries
# (measured: largest 9.7e-4, mean 3e-6): every element within a fifth of one step's lr, and the
# mean difference under 0.2 % of it.
STEP_TOLERANCE = {None: (1e-6, 1e-7), torch.bfloat16: (2e-3, 2e-5)}  # (max, mean) absolute difference


@AUTOCAST
def test_sparse_deltas_and_dense_masking_give_the_same_weights_with_clipping(tiny_model, autocast):
    mask = random_mask(tiny_model, per_matrix=6)
    dense = dense_masked_finetuning(copy.deepcopy(tiny_model), mask)
    sparse = neft_finetuning(copy.deepcopy(tiny_model), mask, "tiny")
    dense_losses = train(dense.model, dense.parameters, batches(tiny_model.config.vocab_size), settings(autocast)).losses
    sparse_losses = train(sparse.model, sparse.parameters, batches(tiny_model.config.vocab_size), settings(autocast)).losses
    torch.testing.assert_close(torch.tensor(sparse_losses), torch.tensor(dense_losses), rtol=1e-3 if autocast else 1e-5, atol=0)
    layout = DecoderLayout.of(tiny_model)
    for kind in (NEURON_KINDS["in"], NEURON_KINDS["out"]):
        for layer in range(mask.shape.num_layers):
            wrapper = sparse.model.get_submodule(layout.module_name(layer, kind))
            assert isinstance(wrapper, NeuronDeltaLinear)
            dense_weight = dense.model.get_parameter(layout.weight_name(layer, kind)).detach()
            base_weight = tiny_model.get_parameter(layout.weight_name(layer, kind)).detach()
            sparse_update = wrapper.merged_weight() - base_weight
            assert sparse_update.abs().amax() > 1e-3, "4 steps at lr 1e-2 must move the selected neurons"
            difference = (sparse_update - (dense_weight - base_weight)).abs()
            largest, mean = STEP_TOLERANCE[autocast]
            assert difference.max() <= largest and difference.mean() <= mean, (difference.max().item(), difference.mean().item())


def float64_reference_gradients(linear: nn.Linear, rows: list[int], columns: list[int], row_delta, column_delta, x, grad_y):
    """Dense autograd in float64 of y = x (W + deltas)^T: gradients for x, the rows and the columns."""
    weight = linear.weight.detach().double().clone().requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    merged = weight.clone()
    merged = merged.index_add(0, torch.tensor(rows), row_delta.detach().double())
    merged = merged.index_add(1, torch.tensor(columns), column_delta.detach().double())
    y = x64 @ merged.T + linear.bias.detach().double()
    y.backward(grad_y.double())
    return x64.grad, weight.grad[rows], weight.grad[:, columns]


# Largest error relative to the gradient's largest entry. fp32: the custom backward is plain fp32
# matmuls; bf16: inputs, merged weight and upstream gradient are rounded to 8 bits of mantissa.
GRADIENT_TOLERANCE = {None: 1e-6, torch.bfloat16: 2e-2}


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    error = (actual.double() - expected).abs().max().item()
    assert error <= tolerance * expected.abs().max().item(), f"error {error:.3g} vs scale {expected.abs().max().item():.3g}"


@AUTOCAST
def test_delta_gradients_match_a_float64_dense_reference(autocast):
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(24, 16, bias=True)
    with torch.no_grad():
        for parameter in linear.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    rows, columns = [1, 5, 9], [0, 3, 23]
    wrapper = NeuronDeltaLinear(linear, rows, columns)
    with torch.no_grad():
        wrapper.row_delta.copy_(0.5 * torch.randn(wrapper.row_delta.shape, generator=generator))
        wrapper.column_delta.copy_(0.5 * torch.randn(wrapper.column_delta.shape, generator=generator))
    x = torch.randn(2, 5, 24, generator=generator).requires_grad_(True)
    grad_y = torch.randn(2, 5, 16, generator=generator)
    with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        y = wrapper(x)
    assert y.dtype == (autocast or torch.float32)
    y.backward(grad_y.to(y.dtype))
    expected_x, expected_rows, expected_columns = float64_reference_gradients(
        linear, rows, columns, wrapper.row_delta, wrapper.column_delta, x, grad_y)
    tolerance = GRADIENT_TOLERANCE[autocast]
    assert wrapper.row_delta.grad.dtype == wrapper.column_delta.grad.dtype == torch.float32
    assert_close_to_scale(wrapper.row_delta.grad, expected_rows, tolerance)
    assert_close_to_scale(wrapper.column_delta.grad, expected_columns, tolerance)
    assert_close_to_scale(x.grad, expected_x, tolerance)


@AUTOCAST
@pytest.mark.parametrize("method", ["full", "neft"])
def test_evaluation_loads_the_trained_weights_not_the_base(tiny_model, tmp_path, method, autocast):
    tiny_model.save_pretrained(tmp_path / "base")
    batch = random_batch(tiny_model.config.vocab_size, seed=7)
    with torch.no_grad():
        base_logits = tiny_model(**batch).logits
    model = copy.deepcopy(tiny_model)
    trainable = full_finetuning(model) if method == "full" else neft_finetuning(model, random_mask(model, per_matrix=5), "tiny")
    train(trainable.model, trainable.parameters, batches(tiny_model.config.vocab_size), settings(autocast))
    trainable.model.eval()
    with torch.no_grad():
        trained_logits = trainable.model(**batch).logits
    trainable.save(tmp_path / method)
    loaded = load_trained_model(method, tmp_path / "base", tmp_path / method).eval()
    with torch.no_grad():
        loaded_logits = loaded(**batch).logits
    assert (loaded_logits - base_logits).abs().max() > 1e-2, "evaluation would score the base model"
    torch.testing.assert_close(loaded_logits, trained_logits, rtol=1e-5, atol=1e-5)
