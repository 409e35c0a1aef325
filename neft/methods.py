"""What makes probe, NeFT, full FT and LoRA different: which parameters train, how they are saved,
and how a saved result is loaded back as a plain model. The training loop itself is shared.

Each way of training is one `Method` in `REGISTRY`: its role (a compared method, a probe kind, the
untrained baseline or the dense-masking reference), its set-up, how its result loads, and which
`SetupInputs` it needs. Every list of method names derives from the registry; adding a method (say
structured random channels, as in S2FT) is one `Method` here and, for the pipeline, its config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from neft.adapter import NeftConfig, NeftModel, get_neft_model
from neft.config import LoraSettings
from neft.io import check_safetensors_in
from neft.masks import NeuronMask
from neft.models import load_model
from neft.neurons import DEFAULT_KINDS, NEURON_KINDS, DecoderLayout
from neft.provenance import model_fingerprint, read_made_from, require_same

if TYPE_CHECKING:
    from neft.config import Config

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainableModel:
    """A model ready for the shared loop: the parameters to optimise and how to save the result."""

    model: nn.Module
    parameters: list[nn.Parameter]
    save: Callable[[Path], None]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters)


def full_finetuning(model: nn.Module) -> TrainableModel:
    model.requires_grad_(True)
    return TrainableModel(model, [p for p in model.parameters()], save=lambda out: model.save_pretrained(out))


def neft_finetuning(model: nn.Module, mask: NeuronMask, base_model: str, made_from: Mapping[str, str] | None = None) -> TrainableModel:
    """`made_from`: fingerprints of the base weights ("base_model") and mask.json ("mask") to record."""
    neft_model = get_neft_model(model, NeftConfig(mask, base_model=base_model, made_from=dict(made_from or {})))
    return TrainableModel(model, neft_model.trainable_parameters(), neft_model.save_pretrained,
                          details={"num_neurons": mask.num_neurons})


def candidate_matrices(model: nn.Module, kinds: Sequence[str]) -> list[nn.Parameter]:
    """The weights that hold the neurons of `kinds` (up_proj for in, down_proj for out), every layer."""
    layout = DecoderLayout.of(model)
    return [model.get_parameter(layout.weight_name(layer, NEURON_KINDS[kind])) for kind in kinds for layer in range(layout.num_layers)]


def matrices_probe(model: nn.Module, kinds: Sequence[str]) -> TrainableModel:
    """Probe option `matrices`: only the candidate matrices train (about 40 % of a 7B Llama's
    parameters, so 40 % of full FT's optimizer state); saved whole, like the full probe."""
    model.requires_grad_(False)
    parameters = candidate_matrices(model, kinds)
    for parameter in parameters:
        parameter.requires_grad_(True)
    return TrainableModel(model, parameters, save=lambda out: model.save_pretrained(out))


def gradient_probe(model: nn.Module, kinds: Sequence[str], step_size: float) -> TrainableModel:
    """Probe option `gradient`: nothing trains. The candidate matrices collect the summed loss
    gradient G of a few batches (`neft.training.accumulate_gradients`), and the saved probe is the
    model after one SGD step along it, W - step_size * G: what that many SGD steps would do if the
    gradient stayed put. The score stage then scores the cosine that step gives, as for any probe.
    Memory: the model, activations and one gradient per candidate matrix; no optimizer state.
    The cosine needs |G| per neuron, a sum over batches, so the gradients are kept rather than
    reduced to per-neuron numbers batch by batch. The model itself is left unchanged."""
    trainable = matrices_probe(model, kinds)
    names = {id(parameter): name for name, parameter in model.named_parameters()}

    def save(out_dir: Path) -> None:
        state = model.state_dict()
        with torch.no_grad():
            for parameter in trainable.parameters:
                if parameter.grad is None:
                    raise RuntimeError(f"{names[id(parameter)]} has no accumulated gradient to step along")
                state[names[id(parameter)]] = parameter.detach() - step_size * parameter.grad
        model.save_pretrained(out_dir, state_dict=state)

    return TrainableModel(model, trainable.parameters, save, details={"probe_step_size": step_size})


def lora_probe(model: nn.Module, kinds: Sequence[str], rank: int) -> TrainableModel:
    """Probe option `lora`: LoRA of `rank` (alpha = rank, scale 1) on the candidate matrices, merged
    before saving, so the scores see base + BA; its memory is LoRA's."""
    targets = sorted({NEURON_KINDS[kind].projection for kind in kinds})
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, bias="none"))
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    return TrainableModel(peft_model, parameters, save=lambda out: peft_model.merge_and_unload().save_pretrained(out),
                          details={"lora_rank": rank, "lora_targets": targets})


def lora_parameters_per_rank(model: nn.Module, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """Trainable LoRA parameters that one unit of rank costs: in + out features of every target."""
    return sum(
        module.in_features + module.out_features
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in targets
    )


def lora_rank_for_budget(model: nn.Module, budget: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """The rank whose trainable count is closest to `budget` (at least 1)."""
    return max(1, round(budget / lora_parameters_per_rank(model, targets)))


def save_lora_adapter(peft_model: PeftModel, out_dir: Path) -> None:
    """peft's save_pretrained, with adapter_config.json's target_modules sorted: peft keeps them in a
    set, whose order (and so the file's bytes) would change with each process's hash seed."""
    peft_model.save_pretrained(out_dir)
    config_file = Path(out_dir) / "adapter_config.json"
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def lora_finetuning(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> TrainableModel:
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS), bias="none")
    peft_model = get_peft_model(model, config)
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    return TrainableModel(peft_model, parameters, save=lambda out: save_lora_adapter(peft_model, out), details={"lora_rank": rank})


def dense_masked_finetuning(model: nn.Module, mask: NeuronMask) -> TrainableModel:
    """The reference implementation's way (kept for tests and benchmarks, never for the pipeline):
    whole candidate matrices train and their gradients are zeroed outside the mask, so the optimizer
    holds state for every weight of them."""
    model.requires_grad_(False)
    layout = DecoderLayout.of(model)
    parameters = []
    for kind in NEURON_KINDS.values():
        if kind.name not in mask.indices:
            continue
        for layer in range(mask.shape.num_layers):
            weight = model.get_parameter(layout.weight_name(layer, kind))
            keep = torch.zeros(weight.shape[kind.axis], dtype=torch.bool, device=weight.device)
            keep[mask.layer_indices(kind.name, layer)] = True
            keep = keep[:, None] if kind.axis == 0 else keep[None, :]
            weight.requires_grad_(True)
            weight.register_hook(lambda grad, keep=keep: grad * keep)
            parameters.append(weight)
    return TrainableModel(model, parameters, save=lambda out: model.save_pretrained(out))


def _load_base(base_dir: Path, weights_dir: Path | None, dtype: torch.dtype | None) -> nn.Module:
    return load_model(base_dir, dtype)


def _load_full(base_dir: Path, weights_dir: Path, dtype: torch.dtype | None) -> nn.Module:
    return load_model(weights_dir, dtype)


def _load_neft(base_dir: Path, weights_dir: Path, dtype: torch.dtype | None) -> nn.Module:
    neft_model = NeftModel.from_pretrained(load_model(base_dir, dtype), weights_dir)
    require_same(f"the NeFT delta in {weights_dir}", neft_model.delta_config.base_fingerprint, model_fingerprint(base_dir),
                 f"the base model in {base_dir}")
    return neft_model.merge_and_unload()


def _load_lora(base_dir: Path, weights_dir: Path, dtype: torch.dtype | None) -> nn.Module:
    require_same(f"the LoRA adapter in {weights_dir}", read_made_from(weights_dir).get("base_model"), model_fingerprint(base_dir),
                 f"the base model in {base_dir}")
    check_safetensors_in(weights_dir)
    return PeftModel.from_pretrained(load_model(base_dir, dtype), weights_dir).merge_and_unload()


def _setup_lora(model: nn.Module, inputs: SetupInputs) -> TrainableModel:
    per_rank = lora_parameters_per_rank(model)  # before peft wraps the linear layers
    settings: LoraSettings = inputs.settings
    trainable = lora_finetuning(model, lora_rank_for_budget(model, inputs.budget), settings.alpha, settings.dropout)
    trainable.details.update(neft_budget=inputs.budget, parameters_per_rank=per_rank)
    return trainable


@dataclass(frozen=True)
class SetupInputs:
    """What a set-up may take besides the model. Each method names the fields it needs (`Method.needs`)."""

    mask: NeuronMask | None = None  # neft, dense_masked
    budget: int | None = None  # lora: the trainable count its rank matches (NeFT's)
    settings: Any = None  # the method's own typed settings (`Method.settings`; its defaults when None), e.g. LoRA's alpha
    kinds: tuple[str, ...] = DEFAULT_KINDS  # probes: the kinds whose matrices they change
    probe_rank: int = 64  # probe_lora
    probe_step_size: float = 1.0  # probe_gradient
    base_model: str = ""  # neft: the base model's name, recorded in the delta
    made_from: Mapping[str, str] | None = None  # neft: fingerprints of the base weights and mask.json


Role = Literal["baseline", "method", "probe", "reference"]


@dataclass(frozen=True)
class FlopSizes:
    """What a training step's FLOP floor depends on (the linear layers' matmuls only)."""

    linear: int  # N: every nn.Linear weight, counted once
    trainable: int  # the method's trainable parameters
    up_down: int  # the up_proj and down_proj weights


def _neft_flops(sizes: FlopSizes) -> tuple[float, str]:
    share = sizes.trainable / sizes.linear
    return (4 + 2 * share) * sizes.linear, f"(4+2r)N, r={share:.4f}"


@dataclass(frozen=True)
class Method:
    """One way of training (or not): what trains, how it is saved and loaded, what it needs."""

    name: str
    role: Role
    label: str  # how tables name it
    setup: Callable[[nn.Module, SetupInputs], TrainableModel] | None = None  # None: nothing trains (the baseline)
    load: Callable[[Path, Path | None, torch.dtype | None], nn.Module] | None = None  # a trained result as a plain model
    needs: tuple[str, ...] = ()  # SetupInputs fields that must be given
    settings: type | None = None  # its own typed settings (methods.<name> in the config extends it), passed as SetupInputs.settings
    probe_kind: str | None = None  # the `probe.kind` that selects this probe
    trains: bool = True  # False: one pass that only accumulates gradients (the gradient probe)
    # FLOPs per token no implementation of a training step can go below, and the formula (benchmarks).
    flop_floor: Callable[[FlopSizes], tuple[float, str]] | None = None


REGISTRY: dict[str, Method] = {method.name: method for method in (
    Method("base", "baseline", "base model", load=_load_base),
    Method("full", "method", "full FT", lambda model, inputs: full_finetuning(model), _load_full,
           flop_floor=lambda sizes: (6 * sizes.linear, "6N")),
    Method("neft", "method", "NeFT, sparse deltas",
           lambda model, inputs: neft_finetuning(model, inputs.mask, inputs.base_model, inputs.made_from), _load_neft,
           needs=("mask",), flop_floor=_neft_flops),
    Method("lora", "method", "LoRA, matched budget", _setup_lora, _load_lora,
           needs=("budget",), settings=LoraSettings,
           flop_floor=lambda sizes: (4 * sizes.linear, "4N (+6 x LoRA params for the adapters themselves)")),
    Method("probe", "probe", "full probe",
           lambda model, inputs: full_finetuning(model), probe_kind="full"),
    Method("probe_matrices", "probe", "candidate-matrices probe",
           lambda model, inputs: matrices_probe(model, inputs.kinds), probe_kind="matrices"),
    Method("probe_lora", "probe", "LoRA probe",
           lambda model, inputs: lora_probe(model, inputs.kinds, inputs.probe_rank), probe_kind="lora"),
    Method("probe_gradient", "probe", "gradient probe",
           lambda model, inputs: gradient_probe(model, inputs.kinds, inputs.probe_step_size), probe_kind="gradient",
           trains=False),
    Method("dense_masked", "reference", "NeFT, dense grad mask (reference)",
           lambda model, inputs: dense_masked_finetuning(model, inputs.mask), needs=("mask",),
           flop_floor=lambda sizes: (4 * sizes.linear + 2 * sizes.up_down, "4N + 2 x (up+down params): dense weight grads of up/down")),
)}


def method_names(*roles: Role) -> tuple[str, ...]:
    """The registered names of these roles, in registry order."""
    return tuple(name for name, method in REGISTRY.items() if method.role in roles)


METHODS = method_names("method")  # what the pipeline compares
EVAL_METHODS = method_names("baseline", "method")  # what it evaluates
TRAINING_RUNS = ("probe", *METHODS)  # what stages.train runs: the probe (its kind from probe.kind) and each method
PROBE_SETUPS = {method.probe_kind: name for name, method in REGISTRY.items() if method.probe_kind}


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(REGISTRY)}")
    return REGISTRY[name]


def probe_method(kind: str) -> Method:
    """The probe that `probe.kind` selects."""
    if kind not in PROBE_SETUPS:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {tuple(PROBE_SETUPS)}")
    return REGISTRY[PROBE_SETUPS[kind]]


def training_run_method(run: str, config: Config) -> Method:
    """The method a pipeline training run uses: a method by its name, the probe by `probe.kind`
    (read only for the probe, so the methods' stages do not depend on it)."""
    return probe_method(config.probe.kind) if run == "probe" else get_method(run)


def setup_method(name: str, model: nn.Module, inputs: SetupInputs = SetupInputs()) -> TrainableModel:
    """Make `model` trainable the way method `name` wants; the training loop afterwards is the same for all."""
    method = get_method(name)
    if method.setup is None:
        raise ValueError(f"{name!r} trains nothing")
    missing = [need for need in method.needs if getattr(inputs, need) is None]
    if missing:
        raise ValueError(f"method {name!r} needs SetupInputs({', '.join(f'{need}=...' for need in missing)})")
    if method.settings is not None and inputs.settings is None:
        inputs = replace(inputs, settings=method.settings())
    return method.setup(model, inputs)


def load_trained_model(name: str, base_dir: Path, weights_dir: Path | None, dtype: torch.dtype | None = None) -> nn.Module:
    """A plain transformers model for method `name`, with any adapter or delta merged in."""
    method = get_method(name)
    if method.load is None:
        raise ValueError(f"{name!r} leaves no result to load; choose one of {EVAL_METHODS}")
    if weights_dir is None and method.role != "baseline":
        raise ValueError(f"method {name!r} needs its trained weights directory")
    return method.load(base_dir, weights_dir, dtype)
