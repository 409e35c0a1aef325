"""Model sources: a base model's plain prompt, Gemma 3 from a config, and the architecture check."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from neft.config import compose_config
from neft.data.records import Example
from neft.models import PLAIN_TEMPLATE, byte_level_tokenizer, load_source_model
from neft.neurons import UnsupportedArchitecture, require_supported_architecture
from neft.tokenization import IGNORE_INDEX, encode_for_training, prompt_text


def test_a_base_model_without_chat_template_gets_the_plain_prompt():
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = PLAIN_TEMPLATE
    assert prompt_text(tokenizer, "Translate: hello") == f"{tokenizer.bos_token}Translate: hello\n\n"
    encoded = encode_for_training(tokenizer, Example("1", "Translate: hello", "你好"), max_length=64)
    target_ids = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(target_ids) == f"你好{tokenizer.eos_token}", "the loss covers the target and the end of text"
    assert encoded.input_ids[0] == tokenizer.bos_token_id


def test_tiny_gemma3_config_builds_a_gemma3_that_neft_supports():
    model, tokenizer = load_source_model(compose_config(["model=tiny-gemma3", "task=jsonl"]).model, seed=0)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_another_architecture_is_refused_naming_what_is_missing():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitecture, match=r"unsupported architecture GPT2LMHeadModel: no decoder layers "
                                                      r"with a gated MLP found.*up_proj and .down_proj"):
        require_supported_architecture(gpt2)


def test_a_projection_that_is_not_a_bias_free_linear_is_refused_by_name(tiny_model):
    mlp = tiny_model.get_submodule("model.layers.1.mlp")
    mlp.down_proj = torch.nn.Linear(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=True)
    with pytest.raises(UnsupportedArchitecture, match=r"missing: model.layers.1.mlp.down_proj \(bias-free Linear"):
        require_supported_architecture(tiny_model)
