"""NeFT as an adapter, used the way PEFT's are:

    model = get_neft_model(base, NeftConfig(mask="artifacts/mask/mask.json"))
    model.print_trainable_parameters()
    ...train model (any loop, or transformers.Trainer)...
    model.save_pretrained("my-delta")
    model = NeftModel.from_pretrained(base, "my-delta")
    with model.disable_adapter(): ...        # the base model's outputs
    plain = model.merge_and_unload()          # deltas written into the weights

PEFT's `register_peft_method` accepts only members of its own `PeftType` enum, so NeFT cannot be a
PEFT tuner from outside; these are the same verbs on NeFT's own wrapper. The layers are found from
the parameter names (`neft.neurons.DecoderLayout`), so any decoder whose MLPs have up_proj/down_proj
(and gate_proj) works, wherever its layers sit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neft.delta import (
    DeltaConfig,
    DeltaError,
    NeuronDeltaLinear,
    attach_deltas,
    detach_deltas,
    load_delta,
    mask_selection,
    require_fits,
    save_delta,
)
from neft.masks import ModelShape, NeuronMask, load_mask, validate_mask
from neft.neurons import DecoderLayout

MaskSource = NeuronMask | str | Path | Callable[[nn.Module], NeuronMask]


@dataclass(frozen=True)
class NeftConfig:
    """What `get_neft_model` builds.

    mask: a NeuronMask, the path of a mask.json (`neft.masks.save_mask`), or a callable that makes a
        mask from the model (for example from probe scores).
    kinds: the neuron kinds the mask may select ("in": rows of up_proj, "out": columns of down_proj,
        "gate": rows of gate_proj); None accepts whatever the mask holds.
    layers_path, mlp_path: where the decoder layers and, inside each, the MLP are
        (`model.layers` and `mlp` for Llama); None finds them from the model.
    base_model: a name for the base model, recorded in the saved neft_config.json.
    made_from: fingerprints (neft.provenance) of the base weights ("base_model") and mask file
        ("mask"), recorded so that loading can check the delta meets the same base.
    """

    mask: MaskSource
    kinds: tuple[str, ...] | None = None
    layers_path: str | None = None
    mlp_path: str | None = None
    base_model: str = ""
    made_from: dict[str, str] | None = None

    def resolve_mask(self, model: nn.Module, layout: DecoderLayout) -> NeuronMask:
        if isinstance(self.mask, NeuronMask):
            mask = self.mask
        elif isinstance(self.mask, (str, Path)):
            mask = load_mask(Path(self.mask))
        elif callable(self.mask):
            mask = self.mask(model)
        else:
            raise TypeError(f"NeftConfig.mask must be a NeuronMask, a mask.json path or a callable, got {type(self.mask).__name__}")
        validate_mask(mask, ModelShape.of(model, layout))
        if self.kinds is not None:
            unexpected = sorted(kind for kind, per_layer in mask.indices.items() if any(per_layer.values()) and kind not in self.kinds)
            if unexpected:
                raise ValueError(f"the mask selects kinds {unexpected}, NeftConfig.kinds allows only {list(self.kinds)}")
        return mask


class _BaseModelCall:
    """NeftModel's forward as seen from outside: the base model's call, under the base model's forward
    signature, because transformers.Trainer keeps only the batch columns that the signature names."""

    def __init__(self, neft_model: NeftModel):
        self.neft_model = neft_model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.neft_model.base_model(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.neft_model.base_model.forward)


class NeftModel(nn.Module):
    """A model with trainable neuron deltas attached; calls and attributes pass through to it."""

    def __init__(self, model: nn.Module, wrappers: dict[str, NeuronDeltaLinear], delta_config: DeltaConfig):
        super().__init__()
        self.base_model = model
        self.delta_config = delta_config
        self._wrappers = wrappers  # a plain dict: the modules are registered inside base_model already
        self.forward = _BaseModelCall(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_model, name)

    @property
    def deltas(self) -> dict[str, NeuronDeltaLinear]:
        return dict(self._wrappers)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The delta tensors that hold at least one number, in a fixed order."""
        return [p for wrapper in self._wrappers.values() for p in (wrapper.row_delta, wrapper.column_delta) if p.numel()]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, as PEFT reports them: all = base parameters + deltas."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def save_pretrained(self, directory: str | Path) -> None:
        """neft_delta.safetensors and neft_config.json, as `neft.delta.save_delta` writes them."""
        save_delta(self._wrappers, Path(directory), self.delta_config)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, is_trainable: bool = False) -> NeftModel:
        """`model` with the delta saved in `directory` attached (frozen unless `is_trainable`)."""
        delta = load_delta(Path(directory))
        require_fits(model, delta)
        selection = {name: (parts["rows"].tolist(), parts["columns"].tolist()) for name, parts in delta.modules.items()}
        wrappers = attach_deltas(model, selection)
        with torch.no_grad():
            for name, wrapper in wrappers.items():
                wrapper.row_delta.copy_(delta.modules[name]["row_delta"])
                wrapper.column_delta.copy_(delta.modules[name]["column_delta"])
                wrapper.row_delta.requires_grad_(is_trainable)
                wrapper.column_delta.requires_grad_(is_trainable)
        return cls(model, wrappers, delta.config)

    def merge(self) -> None:
        """Write the deltas into the base weights in place; `unmerge` restores them bit for bit."""
        for wrapper in self._wrappers.values():
            wrapper.merge()

    def unmerge(self) -> None:
        for wrapper in self._wrappers.values():
            wrapper.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """The base model with the deltas written in and the plain nn.Linear layers back."""
        self.merge()
        return detach_deltas(self.base_model, self._wrappers)

    def unload(self) -> nn.Module:
        """The base model as it was: deltas dropped, plain nn.Linear layers back."""
        self.unmerge()
        return detach_deltas(self.base_model, self._wrappers)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model computes with its base weights alone."""
        if any(wrapper.merged for wrapper in self._wrappers.values()):
            raise DeltaError("the deltas are merged into the weights: call unmerge() before disable_adapter()")
        for wrapper in self._wrappers.values():
            wrapper.disabled = True
        try:
            yield
        finally:
            for wrapper in self._wrappers.values():
                wrapper.disabled = False


def get_neft_model(model: nn.Module, config: NeftConfig) -> NeftModel:
    """Freeze `model` and attach a trainable delta to every matrix holding a neuron of the mask."""
    layout = DecoderLayout.of(model, config.layers_path, config.mlp_path)
    mask = config.resolve_mask(model, layout)
    made_from = config.made_from or {}
    name = config.base_model or getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    delta_config = DeltaConfig.for_mask(mask, name, made_from.get("base_model", ""), made_from.get("mask", ""))
    wrappers = attach_deltas(model, mask_selection(mask, layout))
    return NeftModel(model, wrappers, delta_config)

