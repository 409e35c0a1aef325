"""The one training loop. Probe, NeFT, full FT and LoRA all run through `train`; they differ only in
the parameters they hand it (see `neft.methods`).

AdamW with linear decay (optional warmup), gradient clipping on the trained parameters, optional
bf16 autocast, validation loss every `eval_every` steps, and the best step's parameters restored
at the end (the paper keeps the checkpoint with the lowest validation loss). Step times, the
training window's peak memory and the optimizer-state bytes come from `neft.measure`, as in the
benchmark.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from neft.measure import MemoryWindow, StepTimer, gradient_bytes, optimizer_state_bytes
from neft.tokenization import IGNORE_INDEX


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    learning_rate: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    eval_every: int = 0  # 0: validate only at the end
    autocast_dtype: torch.dtype | None = None
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    valid_losses: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    best_valid_loss: float = math.inf
    seconds: float = 0.0  # the whole run, validation included
    step_seconds: list[float] = field(default_factory=list)  # each optimisation step alone
    train_tokens: int = 0
    peak_memory_bytes: int = 0  # of the training window: set-up and loading excluded (neft.measure)
    memory_before_bytes: int = 0  # in use when the window opened (model and method set up)
    memory_kind: str = ""
    optimizer_state_bytes: int = 0
    gradient_bytes: int = 0


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warmup, then linear decay to zero."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return multiplier


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens, as transformers' causal-LM loss, but
    with the output layer applied only at positions whose next token is a label: with a 262k
    vocabulary (Gemma 3) the logits of prompt and padding positions would dominate time and memory."""
    device = model_device(model)
    labels = batch["labels"].to(device)
    next_is_label = torch.zeros_like(labels, dtype=torch.bool)
    next_is_label[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       logits_to_keep=next_is_label).logits  # [labelled tokens, vocabulary]
    return nn.functional.cross_entropy(logits.float(), labels[:, 1:][next_is_label[:, :-1]])


@torch.no_grad()
def validation_loss(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], autocast_dtype: torch.dtype | None = None) -> float:
    """Token-weighted mean loss over the batches."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(causal_lm_loss(model, batch, autocast_dtype)) * count
        tokens += count
    model.train(was_training)
    return total / max(tokens, 1)


def train(
    model: nn.Module,
    parameters: list[nn.Parameter],
    batches: Iterator[dict[str, torch.Tensor]],
    settings: TrainSettings,
    valid_batches: Sequence[dict[str, torch.Tensor]] = (),
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    description: str = "train",
) -> TrainResult:
    """Optimise `parameters` of `model` for `settings.steps` steps; everything else stays frozen."""
    if not parameters:
        raise ValueError("no trainable parameters")
    device = model_device(model)
    window = MemoryWindow.start(device)
    timer = StepTimer(device)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(settings.warmup_steps, settings.steps))
    result = TrainResult()
    best_state: list[torch.Tensor] | None = None
    model.train()
    start = time.perf_counter()
    progress = tqdm(range(1, settings.steps + 1), desc=description, disable=None, dynamic_ncols=True)
    for step in progress:
        batch = next(batches)
        timer.start()
        loss = causal_lm_loss(model, batch, settings.autocast_dtype)
        loss.backward()
        if step == 1:
            result.gradient_bytes = gradient_bytes(parameters)
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        timer.stop()
        result.losses.append(float(loss.detach()))
        result.train_tokens += int(batch["attention_mask"].sum())
        logged = {"loss": result.losses[-1], "learning_rate": scheduler.get_last_lr()[0]}
        is_eval_step = step == settings.steps or (settings.eval_every and step % settings.eval_every == 0)
        if valid_batches and is_eval_step:
            valid = validation_loss(model, valid_batches, settings.autocast_dtype)
            result.valid_losses.append((step, valid))
            logged["valid_loss"] = valid
            if valid < result.best_valid_loss:
                result.best_step, result.best_valid_loss = step, valid
                if settings.keep_best and step != settings.steps:
                    best_state = [p.detach().clone() for p in parameters]
                else:
                    best_state = None  # the current parameters are the best: nothing to restore
        if on_step:
            on_step(step, logged)
        progress.set_description(f"{description}|step {step}|loss {result.losses[-1]:.4f}")
    if best_state is not None:
        with torch.no_grad():
            for parameter, saved in zip(parameters, best_state, strict=True):
                parameter.copy_(saved)
    result.seconds = time.perf_counter() - start
    result.step_seconds = timer.seconds
    result.peak_memory_bytes = window.peak_bytes()
    result.memory_before_bytes = window.before_bytes
    result.memory_kind = window.kind
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    return result
