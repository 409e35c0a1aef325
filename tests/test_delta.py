"""NeFT's sparse deltas: exact freezing, same optimisation as dense gradient masking, file round trip."""

import copy
import json

import pytest
import torch
from conftest import random_batch, random_mask

from neft.adapter import NeftConfig, NeftModel, get_neft_model
from neft.delta import DELTA_CONFIG, DeltaConfig, DeltaError, NeuronDeltaLinear, load_delta, weight_with_deltas
from neft.errors import UserError
from neft.methods import dense_masked_finetuning, neft_finetuning
from neft.neurons import NEURON_KINDS, DecoderLayout
from neft.training import TrainSettings, train


def endless(batch):
    while True:
        yield batch


def run_steps(trainable, batch, steps=4, lr=1e-2, max_grad_norm=None):
    settings = TrainSettings(steps=steps, learning_rate=lr, max_grad_norm=max_grad_norm, keep_best=False)
    return train(trainable.model, trainable.parameters, endless(batch), settings).losses


def selected_positions(mask, kind, layer):
    return mask.layer_indices(kind.name, layer)


def test_zero_delta_leaves_outputs_unchanged(tiny_model):
    batch = random_batch(tiny_model.config.vocab_size)
    reference = tiny_model(**batch).logits
    get_neft_model(tiny_model, NeftConfig(random_mask(tiny_model, per_matrix=5)))
    torch.testing.assert_close(tiny_model(**batch).logits, reference, rtol=0, atol=1e-6)


def test_after_training_and_merging_only_selected_neurons_changed(tiny_model):
    base_state = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    mask = random_mask(tiny_model, per_matrix=5)
    neft_model = get_neft_model(tiny_model, NeftConfig(mask))
    settings = TrainSettings(steps=3, learning_rate=1e-2, keep_best=False)
    train(neft_model, neft_model.trainable_parameters(), endless(random_batch(tiny_model.config.vocab_size)), settings)
    merged = neft_model.merge_and_unload().state_dict()
    layout = DecoderLayout.of(tiny_model)
    assert set(merged) == set(base_state), "merging must give back the plain model's parameters"
    candidate_names = set()
    for kind in (NEURON_KINDS["in"], NEURON_KINDS["out"]):
        for layer in range(mask.shape.num_layers):
            name = layout.weight_name(layer, kind)
            candidate_names.add(name)
            selected = torch.zeros(mask.shape.d_ff, dtype=torch.bool)
            selected[selected_positions(mask, kind, layer)] = True
            before, after = base_state[name], merged[name]
            if kind.axis == 1:
                before, after = before.T, after.T
            assert torch.equal(after[~selected], before[~selected]), f"unselected neurons of {name} moved"
            assert (after[selected] != before[selected]).any(dim=1).all(), f"a selected neuron of {name} did not train"
    for name, tensor in base_state.items():
        if name not in candidate_names:
            assert torch.equal(merged[name], tensor), f"non-candidate parameter {name} changed"


def test_delta_training_matches_dense_gradient_masking(tiny_model):
    """Same losses step by step as the reference's way (weight decay 0, no clipping)."""
    mask = random_mask(tiny_model, per_matrix=6)
    batch = random_batch(tiny_model.config.vocab_size, seed=3)
    dense_losses = run_steps(dense_masked_finetuning(copy.deepcopy(tiny_model), mask), batch)
    delta_losses = run_steps(neft_finetuning(copy.deepcopy(tiny_model), mask, "tiny"), batch)
    assert dense_losses[0] == pytest.approx(delta_losses[0], abs=1e-6)
    assert dense_losses[-1] < dense_losses[0]
    torch.testing.assert_close(torch.tensor(delta_losses), torch.tensor(dense_losses), rtol=1e-4, atol=1e-5)


def test_delta_trains_only_k_times_d_model_parameters(tiny_model):
    mask = random_mask(tiny_model, per_matrix=5)
    trainable = neft_finetuning(tiny_model, mask, "tiny")
    assert trainable.trainable_parameters == mask.num_neurons * tiny_model.config.hidden_size
    assert not any(p.requires_grad for name, p in tiny_model.named_parameters() if "delta" not in name)


def test_delta_save_load_merge_round_trips(tiny_model, tmp_path):
    mask = random_mask(tiny_model, per_matrix=4)
    untouched = copy.deepcopy(tiny_model)
    neft_model = get_neft_model(tiny_model, NeftConfig(mask, base_model="tiny"))
    with torch.no_grad():
        for parameter in neft_model.trainable_parameters():
            parameter.normal_()
    neft_model.save_pretrained(tmp_path / "delta")
    merged_in_memory = neft_model.merge_and_unload().state_dict()
    merged_from_file = NeftModel.from_pretrained(untouched, tmp_path / "delta").merge_and_unload().state_dict()
    for name, tensor in merged_in_memory.items():
        assert torch.equal(tensor, merged_from_file[name]), name
    assert all(not isinstance(m, NeuronDeltaLinear) for m in tiny_model.modules())


def test_delta_file_holds_values_and_indices_only(tiny_model, tmp_path):
    mask = random_mask(tiny_model, per_matrix=4)
    get_neft_model(tiny_model, NeftConfig(mask)).save_pretrained(tmp_path / "delta")
    size = (tmp_path / "delta" / "neft_delta.safetensors").stat().st_size
    values = mask.num_neurons * tiny_model.config.hidden_size * 4
    indices = mask.num_neurons * 8
    assert values + indices <= size <= 1.05 * values + indices + 4096  # + safetensors header


def save_random_delta(model, out_dir):
    mask = random_mask(model, per_matrix=4)
    get_neft_model(copy.deepcopy(model), NeftConfig(mask, base_model="tiny")).save_pretrained(out_dir)
    return mask


def test_delta_for_another_model_is_rejected(tiny_model, tmp_path):
    save_random_delta(tiny_model, tmp_path / "delta")
    other = copy.deepcopy(tiny_model)
    name = next(iter(load_delta(tmp_path / "delta").modules))
    parent, _, child = name.rpartition(".")
    narrower = other.get_submodule(name)
    setattr(other.get_submodule(parent), child, torch.nn.Linear(narrower.in_features - 1, narrower.out_features, bias=False))
    with pytest.raises(DeltaError, match="the model needs .* made for 'tiny'"):
        NeftModel.from_pretrained(other, tmp_path / "delta")


def test_saved_config_round_trips_and_records_the_mask(tiny_model, tmp_path):
    mask = save_random_delta(tiny_model, tmp_path / "delta")
    config = load_delta(tmp_path / "delta").config
    assert config == DeltaConfig("tiny", ("in", "out"), mask.num_neurons, mask.ratio, tiny_model.config.hidden_size)


@pytest.mark.parametrize("edit, message", [
    ({"format": "neft-delta/v1"}, "format is 'neft-delta/v1', this version reads 'neft-delta/v2'"),
    ({"kinds": ["in", "sideways"]}, "kinds must be a non-empty subset"),
    ({"num_neurons": "12"}, "num_neurons must be an integer"),
    ({"ratio": 1.5}, "ratio must be a number in \\(0, 1\\)"),
    ({"d_model": 0}, "d_model must be an integer"),
    ({"surprise": 1}, "unknown keys \\['surprise'\\]"),
    ({"base_model": None, "ratio": 0}, "base_model must be .*; ratio must be"),  # every problem at once
])
def test_malformed_config_is_rejected_on_load(tiny_model, tmp_path, edit, message):
    save_random_delta(tiny_model, tmp_path / "delta")
    path = tmp_path / "delta" / DELTA_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(DeltaError, match=message):
        load_delta(tmp_path / "delta")


def test_config_that_disagrees_with_the_tensors_is_rejected(tiny_model, tmp_path):
    mask = save_random_delta(tiny_model, tmp_path / "delta")
    path = tmp_path / "delta" / DELTA_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_neurons": mask.num_neurons + 1}))
    with pytest.raises(DeltaError, match=f"holds {mask.num_neurons} neurons"):
        load_delta(tmp_path / "delta")


def test_a_directory_without_a_delta_is_rejected(tmp_path):
    with pytest.raises(DeltaError, match="neft_config.json is missing"):
        load_delta(tmp_path)


def test_weight_with_deltas_rounds_each_selected_weight_once_in_bf16():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, generator=generator).bfloat16()
    rows, columns = torch.tensor([1, 4]), torch.tensor([0, 3])
    row_delta, column_delta = 1e-2 * torch.randn(2, 5, generator=generator), 1e-2 * torch.randn(6, 2, generator=generator)
    expected = weight.float()
    expected[rows] += row_delta
    expected[:, columns] += column_delta  # the intersections get both deltas
    merged = weight_with_deltas(weight, rows, row_delta, columns, column_delta, torch.bfloat16)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, expected.bfloat16())


def test_a_truncated_delta_file_is_refused_naming_it(tiny_model, tmp_path):
    save_random_delta(tiny_model, tmp_path / "delta")
    weights = tmp_path / "delta" / "neft_delta.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="neft_delta.safetensors: truncated or corrupt .safetensors file"):
        load_delta(tmp_path / "delta")
