import dataclasses
import typing

import pytest
import torch
from conftest import random_batch, random_mask

from neft.config import PROBE_KINDS, LoraSettings, MethodConfig, MethodsConfig
from neft.methods import (
    EVAL_METHODS,
    LORA_TARGETS,
    METHODS,
    PROBE_SETUPS,
    REGISTRY,
    Method,
    SetupInputs,
    full_finetuning,
    load_trained_model,
    lora_finetuning,
    lora_parameters_per_rank,
    lora_rank_for_budget,
    neft_finetuning,
    setup_method,
)
from neft.models import count_parameters


def test_lora_parameters_per_rank_counts_all_seven_projections(tiny_model):
    config = tiny_model.config
    d, f, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    per_layer = (d + d) + (d + kv) * 2 + (d + d) + 3 * (d + f)
    assert lora_parameters_per_rank(tiny_model) == per_layer * config.num_hidden_layers


def test_lora_rank_matches_the_neft_budget(tiny_model):
    budget = random_mask(tiny_model, per_matrix=10).trainable_parameters
    rank = lora_rank_for_budget(tiny_model, budget)
    per_rank = lora_parameters_per_rank(tiny_model, LORA_TARGETS)
    trainable = lora_finetuning(tiny_model, rank, alpha=16)
    assert trainable.trainable_parameters == rank * per_rank
    assert abs(trainable.trainable_parameters - budget) <= per_rank / 2


def test_full_finetuning_trains_every_parameter_once(tiny_model):
    # Written out for the tiny Llama: tied embedding 259 x 32; per layer q, o 32x32, k, v 32x16,
    # gate/up/down 32x48, two norms of 32; the final norm. The tied output layer counts once.
    # Gemma 3 adds per layer two more norms of 32 (around the MLP) and q/k norms of head_dim 8.
    llama = 259 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 48 + 2 * 32) + 32
    expected = {"llama": llama, "gemma3_text": llama + 2 * (2 * 32 + 2 * 8)}[tiny_model.config.model_type]
    trainable = full_finetuning(tiny_model)
    assert trainable.trainable_parameters == count_parameters(tiny_model) == expected
    assert len({id(p) for p in trainable.parameters}) == len(trainable.parameters)


def test_saved_lora_adapter_loads_and_merges_to_the_same_outputs(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    trainable = lora_finetuning(tiny_model, rank=2, alpha=16)
    with torch.no_grad():
        for parameter in trainable.parameters:
            parameter.normal_(std=0.1)
    batch = random_batch(tiny_model.config.vocab_size)
    expected = trainable.model(**batch).logits
    trainable.save(tmp_path / "adapter")
    merged = load_trained_model("lora", tmp_path / "base", tmp_path / "adapter")
    torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)


def test_unknown_method_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        load_trained_model("prefix", tmp_path, tmp_path)


def test_a_method_without_what_it_needs_is_refused_naming_it(tiny_model):
    with pytest.raises(ValueError, match=r"method 'neft' needs SetupInputs\(mask=...\)"):
        setup_method("neft", tiny_model, SetupInputs())
    with pytest.raises(ValueError, match=r"method 'lora' needs SetupInputs\(budget=...\)"):
        setup_method("lora", tiny_model, SetupInputs(mask=random_mask(tiny_model, per_matrix=2)))


def test_the_registry_agrees_with_the_config_and_the_pipeline():
    """Every compared method has a config section (its rates) and a result to evaluate; every probe
    kind the config accepts has a probe; the pipeline's lists are the registry's."""
    assert {field.name for field in dataclasses.fields(MethodsConfig)} == set(METHODS)
    assert all(REGISTRY[name].setup and REGISTRY[name].load for name in METHODS)
    assert set(PROBE_SETUPS) == set(PROBE_KINDS) and all(REGISTRY[name].role == "probe" for name in PROBE_SETUPS.values())
    assert EVAL_METHODS == ("base", *METHODS) and REGISTRY["base"].setup is None
    for name, section in typing.get_type_hints(MethodsConfig).items():  # methods.<name>: its rates and its own typed settings
        assert issubclass(section, MethodConfig) and issubclass(section, REGISTRY[name].settings or object), name


@pytest.mark.parametrize(("settings", "alpha", "dropout"), [(None, 16.0, 0.0), (LoraSettings(alpha=8.0, dropout=0.1), 8.0, 0.1)])
def test_a_method_s_typed_settings_reach_its_set_up_and_default_when_not_given(tiny_model, settings, alpha, dropout):
    budget = 2 * lora_parameters_per_rank(tiny_model)
    trainable = setup_method("lora", tiny_model, SetupInputs(budget=budget, settings=settings))
    adapter = trainable.model.peft_config["default"]
    assert (adapter.r, adapter.lora_alpha, adapter.lora_dropout) == (2, alpha, dropout)


def test_a_registered_method_trains_through_the_shared_set_up(tiny_model, monkeypatch):
    """Adding a method is one Method: here the first column of every down_proj, as a structured sketch."""
    def first_columns(model, inputs):
        mask = random_mask(model, per_matrix=1)
        mask.indices = {"out": {layer: [0] for layer in range(mask.shape.num_layers)}}
        return neft_finetuning(model, mask, "tiny")

    monkeypatch.setitem(REGISTRY, "first_columns", Method("first_columns", "method", "first columns", first_columns))
    trainable = setup_method("first_columns", tiny_model)
    assert trainable.trainable_parameters == tiny_model.config.num_hidden_layers * tiny_model.config.hidden_size
