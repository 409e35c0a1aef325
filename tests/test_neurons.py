import pandas as pd
import pytest
import torch

from neft.neurons import NEURON_KINDS, cosine_per_neuron, resolve_kinds, score_neurons, weight_name


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


def test_score_neurons_reads_checkpoints_and_labels_every_neuron(tmp_path, tiny_model):
    base_dir, tuned_dir = tmp_path / "base", tmp_path / "tuned"
    tiny_model.save_pretrained(base_dir)
    with torch.no_grad():
        tiny_model.get_parameter(weight_name(1, NEURON_KINDS["in"]))[5] += 1.0  # change one "in" neuron
    tiny_model.save_pretrained(tuned_dir)
    scores = score_neurons(base_dir, tuned_dir, ["in", "out"])
    d_ff, layers = tiny_model.config.intermediate_size, tiny_model.config.num_hidden_layers
    assert len(scores) == 2 * layers * d_ff
    assert list(scores.columns) == ["layer", "kind", "index", "score"]
    lowest = scores.sort_values("score").iloc[0]
    assert (lowest["layer"], lowest["kind"], lowest["index"]) == (1, "in", 5)
    assert (scores.drop(index=lowest.name)["score"] > 0.9999).all()


def test_score_neurons_reads_sharded_checkpoints(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "single")
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    pd.testing.assert_frame_equal(
        score_neurons(tmp_path / "single", tmp_path / "single", ["in", "out"]),
        score_neurons(tmp_path / "sharded", tmp_path / "sharded", ["in", "out"]),
    )


def test_unknown_neuron_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown neuron kind"):
        resolve_kinds(["in", "attention"])
