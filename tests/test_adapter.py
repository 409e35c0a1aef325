"""NeFT as a PEFT-style adapter: get_neft_model, save/from_pretrained, merge/unmerge, the disable
context, and decoders whose layers are not at `model.layers`."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_batch, random_mask
from torch import nn

from neft.adapter import NeftConfig, NeftModel, get_neft_model
from neft.delta import DeltaError, NeuronDeltaLinear
from neft.masks import MaskError, save_mask
from neft.neurons import DecoderLayout, UnsupportedArchitecture


def perturbed(neft_model: NeftModel, seed: int = 0) -> NeftModel:
    """As if trained: every delta set to small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in neft_model.trainable_parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return neft_model


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_get_neft_model_trains_only_the_masks_neurons_and_reports_them(tiny_model, capsys):
    mask = random_mask(tiny_model, per_matrix=5)
    neft_model = get_neft_model(tiny_model, NeftConfig(mask))
    trainable, total = neft_model.get_nb_trainable_parameters()
    assert trainable == mask.num_neurons * tiny_model.config.hidden_size
    assert total == sum(p.numel() for p in tiny_model.parameters())
    neft_model.print_trainable_parameters()
    assert capsys.readouterr().out == (f"trainable params: {trainable:,d} || all params: {total:,d} || "
                                       f"trainable%: {100 * trainable / total:.4f}\n")


def test_disable_adapter_gives_the_base_model_and_merge_unmerge_round_trip_bit_for_bit(tiny_model):
    batch = random_batch(tiny_model.config.vocab_size)
    base_logits = logits(tiny_model, batch)
    base_state = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    neft_model = perturbed(get_neft_model(tiny_model, NeftConfig(random_mask(tiny_model, per_matrix=5))))
    adapted = logits(neft_model, batch)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)
    with neft_model.disable_adapter():
        assert torch.equal(logits(neft_model, batch), base_logits)
    torch.testing.assert_close(logits(neft_model, batch), adapted, rtol=0, atol=0)

    neft_model.merge()
    torch.testing.assert_close(logits(neft_model, batch), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(DeltaError, match="call unmerge"), neft_model.disable_adapter():
        pass
    neft_model.unmerge()
    for wrapper_name, wrapper in neft_model.deltas.items():
        assert torch.equal(wrapper.base.weight, base_state[f"{wrapper_name}.weight"]), wrapper_name

    plain = neft_model.unload()
    assert not any(isinstance(module, NeuronDeltaLinear) for module in plain.modules())
    assert all(torch.equal(tensor, base_state[name]) for name, tensor in plain.state_dict().items())


def test_save_and_from_pretrained_give_the_same_model(tiny_model, tmp_path):
    untouched = copy.deepcopy(tiny_model)
    batch = random_batch(tiny_model.config.vocab_size, seed=1)
    neft_model = perturbed(get_neft_model(tiny_model, NeftConfig(random_mask(tiny_model, per_matrix=4), base_model="tiny")))
    neft_model.save_pretrained(tmp_path / "delta")

    loaded = NeftModel.from_pretrained(copy.deepcopy(untouched), tmp_path / "delta")
    assert torch.equal(logits(loaded, batch), logits(neft_model, batch))
    assert loaded.delta_config == neft_model.delta_config
    assert loaded.get_nb_trainable_parameters()[0] == 0, "loaded for inference unless is_trainable"
    trainable = NeftModel.from_pretrained(untouched, tmp_path / "delta", is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == neft_model.get_nb_trainable_parameters()[0]
    with pytest.raises(DeltaError, match="already carries a NeFT delta"):
        NeftModel.from_pretrained(untouched, tmp_path / "delta")


def test_the_mask_may_be_a_file_or_a_callable_and_kinds_limit_it(tiny_model, tmp_path):
    mask = random_mask(tiny_model, per_matrix=3)
    save_mask(mask, tmp_path / "mask.json")
    from_file = get_neft_model(copy.deepcopy(tiny_model), NeftConfig(str(tmp_path / "mask.json")))
    from_callable = get_neft_model(copy.deepcopy(tiny_model), NeftConfig(lambda model: random_mask(model, per_matrix=3)))
    assert set(from_file.deltas) == set(from_callable.deltas)
    with pytest.raises(ValueError, match=r"the mask selects kinds \['out'\], NeftConfig.kinds allows only \['in'\]"):
        get_neft_model(copy.deepcopy(tiny_model), NeftConfig(mask, kinds=("in",)))


def test_a_mask_for_another_shape_is_refused(tiny_model):
    mask = random_mask(tiny_model, per_matrix=3)
    mask.indices["in"][0] = [tiny_model.config.intermediate_size + 5]
    with pytest.raises(MaskError):
        get_neft_model(tiny_model, NeftConfig(mask))


class GatedFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.feed_forward = GatedFeedForward(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.feed_forward(self.norm(x))


class BackboneLM(nn.Module):
    """A decoder whose layers sit at `backbone.blocks` and whose MLP is `feed_forward`."""

    def __init__(self, vocab_size: int = 40, d_model: int = 16, d_ff: int = 24, num_layers: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.backbone = nn.Module()
        self.backbone.blocks = nn.ModuleList(Block(d_model, d_ff) for _ in range(num_layers))
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.backbone.blocks:
            x = block(x)
        return self.head(x)


def test_a_decoder_with_its_layers_elsewhere_is_found_trained_and_merged():
    model = BackboneLM()
    layout = DecoderLayout.of(model)
    assert (layout.layers, layout.mlp, layout.num_layers) == ("backbone.blocks", "feed_forward", 3)
    base_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    mask = random_mask(model, per_matrix=4)
    neft_model = get_neft_model(model, NeftConfig(mask))
    assert set(neft_model.deltas) == {f"backbone.blocks.{i}.feed_forward.{p}" for i in range(3) for p in ("up_proj", "down_proj")}

    optimizer = torch.optim.SGD(neft_model.trainable_parameters(), lr=0.1)
    input_ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        loss = nn.functional.cross_entropy(neft_model(input_ids)[:, :-1].reshape(-1, 40), input_ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    merged = neft_model.merge_and_unload().state_dict()
    changed = {name for name, tensor in merged.items() if not torch.equal(tensor, base_state[name])}
    assert changed == {f"{name}.weight" for name in neft_model.deltas}
    up = "backbone.blocks.1.feed_forward.up_proj.weight"
    moved_rows = (merged[up] != base_state[up]).any(dim=1).nonzero().flatten().tolist()
    assert moved_rows == mask.layer_indices("in", 1)


def test_several_layouts_must_be_named_and_a_pinned_one_is_used():
    model = BackboneLM()
    model.draft = nn.Module()
    model.draft.blocks = nn.ModuleList(Block(16, 24) for _ in range(2))
    with pytest.raises(UnsupportedArchitecture, match="several decoder layouts found .* name one with layers_path"):
        DecoderLayout.of(model)
    mask = random_mask(BackboneLM(), per_matrix=2)
    neft_model = get_neft_model(model, NeftConfig(mask, layers_path="backbone.blocks"))
    assert all(name.startswith("backbone.blocks.") for name in neft_model.deltas)


def test_deltas_are_ordered_layer_by_layer_not_by_name():
    """The parameter order sets the clipped gradient norm's summation order: layer 10 after layer 9."""
    model = BackboneLM(num_layers=12)
    neft_model = get_neft_model(model, NeftConfig(random_mask(model, per_matrix=2)))
    layers = [int(name.split(".")[2]) for name in neft_model.deltas]
    assert layers == sorted(layers) and layers[-1] == 11
    assert list(neft_model.deltas)[:2] == ["backbone.blocks.0.feed_forward.down_proj", "backbone.blocks.0.feed_forward.up_proj"]
