import pandas as pd
import pytest
import torch

from neft.neurons import NEURON_KINDS, DecoderLayout, cosine_per_neuron, neuron_change, resolve_kinds, score_neurons, score_pair


def naive_cosines(base: torch.Tensor, tuned: torch.Tensor, axis: int) -> list[float]:
    """One neuron at a time, in float64: the definition, written out."""
    count = base.shape[axis]
    values = []
    for j in range(count):
        a = (base[j] if axis == 0 else base[:, j]).double()
        b = (tuned[j] if axis == 0 else tuned[:, j]).double()
        values.append(float(a @ b / (a.norm() * b.norm())))
    return values


@pytest.mark.parametrize("axis", [0, 1])
def test_vectorised_cosine_equals_naive_loop(axis):
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(48, 32, generator=generator)
    tuned = base + 0.05 * torch.randn(48, 32, generator=generator)
    vectorised = cosine_per_neuron(base, tuned, axis)
    assert vectorised.dtype == torch.float32
    assert vectorised.shape == (base.shape[axis],)
    torch.testing.assert_close(vectorised.double(), torch.tensor(naive_cosines(base, tuned, axis), dtype=torch.float64), atol=1e-6, rtol=0)


def test_cosine_is_signed_and_one_for_unchanged_neurons():
    base = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    tuned = torch.tensor([[-1.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    assert cosine_per_neuron(base, tuned, axis=0).tolist() == [-1.0, 1.0, 1.0]


def reference_change(base: torch.Tensor, tuned: torch.Tensor, axis: int) -> torch.Tensor:
    """1 - cosine by the definition in float64, one neuron at a time: accurate to ~1e-16 absolute."""
    return 1.0 - torch.tensor(naive_cosines(base, tuned, axis), dtype=torch.float64)


def rotated_rows(base: torch.Tensor, angles: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each row of `base` turned by its angle towards a random orthogonal direction, norm kept (float64)."""
    base = base.double()
    direction = torch.randn(base.shape, generator=generator, dtype=torch.float64)
    direction -= (direction * base).sum(1, keepdim=True) / (base * base).sum(1, keepdim=True) * base
    direction *= base.norm(dim=1, keepdim=True) / direction.norm(dim=1, keepdim=True)
    return base * torch.cos(angles)[:, None] + direction * torch.sin(angles)[:, None]


def test_tiny_rotations_tie_in_fp32_but_the_stable_change_ranks_them():
    # 64 neurons turned so that 1 - cos runs from 1e-8 to 1e-7, a short probe's scale: below the fp32
    # spacing just under 1 (6e-8), so fp32 cosines collapse into a few values.
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(64, 256, generator=generator)
    target_change = torch.linspace(1e-8, 1e-7, 64, dtype=torch.float64)[torch.randperm(64, generator=generator)]
    tuned = rotated_rows(base, torch.arccos(1 - target_change), generator).float()
    reference = reference_change(base, tuned, axis=0)

    fp32_cosine = cosine_per_neuron(base, tuned, axis=0)
    assert fp32_cosine.unique().numel() <= 8, "fp32 should not resolve these"
    top16 = set(torch.argsort(reference, descending=True)[:16].tolist())
    assert set(torch.argsort(fp32_cosine, stable=True)[:16].tolist()) != top16
    cosine, change = neuron_change(base, tuned, axis=0)
    assert change.dtype == cosine.dtype == torch.float64
    torch.testing.assert_close(change, reference, rtol=1e-5, atol=0)
    assert torch.equal(torch.argsort(change), torch.argsort(reference))
    assert torch.equal(torch.argsort(change), torch.argsort(target_change))  # storing tuned in fp32 keeps the order
    torch.testing.assert_close(cosine, 1 - reference, rtol=0, atol=1e-15)


@pytest.mark.parametrize("axis", [0, 1])
def test_stable_change_is_exact_for_bf16_weights_with_small_updates(axis):
    # bf16 weights and an update of a few units in the last place on a varying share of each neuron's
    # weights, as a bf16 probe leaves them: every neuron changed by a different amount.
    generator = torch.Generator().manual_seed(2)
    base = (0.02 * torch.randn(40, 96, generator=generator)).bfloat16()
    if axis == 1:
        base = base.T.contiguous()
    neurons = base.shape[axis]
    share = torch.linspace(0.02, 0.6, neurons)
    share = share[:, None] if axis == 0 else share[None, :]
    touched = torch.rand(base.shape, generator=generator) < share
    step = 1e-2 * base.float().abs() * torch.randn(base.shape, generator=generator)
    tuned = torch.where(touched, base.float() + step, base.float()).bfloat16()
    reference = reference_change(base, tuned, axis)

    cosine, change = neuron_change(base, tuned, axis)
    torch.testing.assert_close(change, reference, rtol=1e-6, atol=1e-17)
    assert torch.equal(torch.argsort(change), torch.argsort(reference))
    assert change.unique().numel() == neurons


def test_stable_change_of_opposite_and_zero_neurons():
    base = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    tuned = torch.tensor([[-1.0, 0.0], [0.0, 5.0], [0.0, 0.0], [-1.0, 1.0]])
    cosine, change = neuron_change(base, tuned, axis=0)
    assert cosine.tolist() == [-1.0, 1.0, 1.0, pytest.approx(0.0, abs=1e-16)]
    assert change.tolist() == [2.0, 0.0, 0.0, pytest.approx(1.0)]


def test_fp32_form_reproduces_the_paper_cosine():
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(8, 16, generator=generator)
    tuned = base + 0.1 * torch.randn(8, 16, generator=generator)
    cosine, change = score_pair(base, tuned, axis=0, form="fp32")
    assert torch.equal(cosine, cosine_per_neuron(base, tuned, axis=0).double())
    assert torch.equal(change, 1 - cosine)
    with pytest.raises(ValueError, match="unknown score form 'fp16'"):
        score_pair(base, tuned, axis=0, form="fp16")


def test_score_neurons_reads_checkpoints_and_labels_every_neuron(tmp_path, tiny_model):
    base_dir, tuned_dir = tmp_path / "base", tmp_path / "tuned"
    tiny_model.save_pretrained(base_dir)
    with torch.no_grad():
        tiny_model.get_parameter(DecoderLayout.of(tiny_model).weight_name(1, NEURON_KINDS["in"]))[5] += 1.0  # change one "in" neuron
    tiny_model.save_pretrained(tuned_dir)
    scores = score_neurons(base_dir, tuned_dir, ["in", "out"])
    d_ff, layers = tiny_model.config.intermediate_size, tiny_model.config.num_hidden_layers
    assert len(scores) == 2 * layers * d_ff
    assert list(scores.columns) == ["layer", "kind", "index", "cosine", "change"]
    most_changed = scores.sort_values("change", ascending=False).iloc[0]
    assert (most_changed["layer"], most_changed["kind"], most_changed["index"]) == (1, "in", 5)
    assert (scores.drop(index=most_changed.name)["change"] == 0).all()


def test_sharded_scoring_equals_single_file_on_a_pair_that_differs(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "base_single")
    tiny_model.save_pretrained(tmp_path / "base_sharded", max_shard_size="50KB")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator))
    tiny_model.save_pretrained(tmp_path / "tuned_single")
    tiny_model.save_pretrained(tmp_path / "tuned_sharded", max_shard_size="50KB")
    assert (tmp_path / "tuned_sharded" / "model.safetensors.index.json").is_file()
    single = score_neurons(tmp_path / "base_single", tmp_path / "tuned_single", ["in", "out"])
    assert single["change"].nunique() == len(single), "every neuron changed by its own amount"
    pd.testing.assert_frame_equal(single, score_neurons(tmp_path / "base_sharded", tmp_path / "tuned_sharded", ["in", "out"]))
    pd.testing.assert_frame_equal(single, score_neurons(tmp_path / "base_single", tmp_path / "tuned_sharded", ["in", "out"]))


def test_unknown_neuron_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown neuron kind"):
        resolve_kinds(["in", "attention"])


def test_scoring_leaves_its_inputs_untouched():
    base = torch.randn(6, 5, dtype=torch.float64)
    tuned = base + 0.1 * torch.randn(6, 5, dtype=torch.float64)
    copies = base.clone(), tuned.clone()
    neuron_change(base, tuned, axis=0)
    neuron_change(base, tuned, axis=1)
    assert torch.equal(base, copies[0]) and torch.equal(tuned, copies[1])
