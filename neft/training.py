"""The one training loop. Probe, NeFT, full FT and LoRA all run through `train`; they differ only in
the parameters they hand it (see `neft.methods`).

AdamW with linear decay (optional warmup), gradient clipping on the trained parameters, optional
bf16 autocast, validation loss every `eval_every` steps, and the best step's parameters restored
at the end (the paper keeps the checkpoint with the lowest validation loss). Step times, the
training window's peak memory and the optimizer-state bytes come from `neft.measure`, as in the
benchmark.

With `Checkpoints`, the loop saves everything it needs to continue every `every` steps (trainable
parameters, optimizer, scheduler, RNG states, the data position, the best-so-far state and the log),
atomically, and a run started again picks up after the last checkpoint whose fingerprint matches,
ending with the same losses and parameters as a run that was never stopped (bit-equal on CPU).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from neft.distributed import ONE_PROCESS, Ranks
from neft.errors import UserError
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
    micro_batches: int = 1  # gradient accumulation: forward/backward passes per batch

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")


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
    resumed_from_step: int = 0  # 0: started from scratch


@dataclass(frozen=True)
class Checkpoints:
    """Where and how often the loop checkpoints, and what the run is made of: a checkpoint whose
    fingerprint differs (other config, data or weights) belongs to another run and is ignored. An
    unreadable one (truncated, garbage) is a user error naming the file: `check` finds it before the
    stage touches its reports, and hands what it read to the loop's `load`."""

    directory: Path
    every: int
    fingerprint: str
    _read_ahead: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    FORMAT = "neft-checkpoint/v1"

    @property
    def path(self) -> Path:
        return Path(self.directory) / "checkpoint.pt"

    def save(self, state: dict) -> None:
        """Write through a temporary file and an atomic rename: a kill mid-write leaves the last one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(f".{self.path.name}.tmp")
        torch.save({"format": self.FORMAT, "fingerprint": self.fingerprint, **state}, scratch)
        os.replace(scratch, self.path)

    def check(self) -> None:
        """Read the checkpoint now, so that an unreadable one fails before anything is written; the
        next `load` returns what this read (once), so a large checkpoint is read only once."""
        self._read_ahead["state"] = self._read()

    def load(self) -> dict | None:
        if "state" in self._read_ahead:
            return self._read_ahead.pop("state")
        return self._read()

    def _read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as error:
            if isinstance(error, OSError) and error.errno != errno.EINVAL:  # EINVAL: torch's zip reader on a cut-short file
                raise
            raise UserError(f"{self.path}: unreadable checkpoint, truncated or corrupt (torch.load: {type(error).__name__}); "
                            f"delete it to restart this run from scratch: rm {self.path}") from None
        if not isinstance(state, dict) or state.get("format") != self.FORMAT or state.get("fingerprint") != self.fingerprint:
            return None
        return state

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _rng_states() -> dict[str, object]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng_states(states: dict[str, object]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


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


def backward_on_batch(model: nn.Module, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None,
                      ranks: Ranks = ONE_PROCESS, micro_batches: int = 1) -> tuple[float, int]:
    """Back-propagate one batch (under torchrun, this rank's share of the global batch) in
    `micro_batches` forward/backward passes, adding into `.grad` the gradient of the global batch's
    mean loss over its labelled tokens: each pass's mean loss is weighted by world_size x its
    labelled tokens / the global batch's (DDP then averages over ranks). DDP reduces only after the
    last pass. Returns the global batch's mean loss and its input-token count."""
    pieces = [{name: tensor.tensor_split(micro_batches)[index] for name, tensor in batch.items()} for index in range(micro_batches)]
    labelled = [float((piece["labels"][:, 1:] != IGNORE_INDEX).sum()) for piece in pieces]
    global_labelled, global_inputs = ranks.sum_over_ranks([sum(labelled), float(batch["attention_mask"].sum())])
    loss_sum = 0.0
    for index, (piece, count) in enumerate(zip(pieces, labelled, strict=True)):
        last = index == micro_batches - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            loss = causal_lm_loss(model, piece, autocast_dtype)
            (loss * (ranks.world_size * count / global_labelled)).backward()
        loss_sum += float(loss.detach()) * count
    return ranks.sum_over_ranks([loss_sum])[0] / global_labelled, int(global_inputs)


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
    checkpoints: Checkpoints | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> TrainResult:
    """Optimise `parameters` of `model` for `settings.steps` steps; everything else stays frozen.
    `batches` must be the same deterministic sequence on every attempt (it is replayed to resume).
    Under torchrun, `model` is DDP-wrapped, `batches` are this rank's slices, and rank 0 alone
    writes checkpoints (neft.distributed)."""
    if not parameters:
        raise ValueError("no trainable parameters")
    device = model_device(model)
    window = MemoryWindow.start(device)
    timer = StepTimer(device)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(settings.warmup_steps, settings.steps))
    result = TrainResult()
    best_state: list[torch.Tensor] | None = None
    history: list[tuple[int, dict[str, float]]] = []  # what on_step was given, replayed on resume
    first_step = 1
    saved = checkpoints.load() if checkpoints else None
    if saved is not None:
        with torch.no_grad():
            for parameter, value in zip(parameters, saved["parameters"], strict=True):
                parameter.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        result = TrainResult(**saved["result"])
        timer.seconds.extend(result.step_seconds)
        best_state = saved["best_state"]
        history = [(step, dict(logged)) for step, logged in saved["history"]]
        for _ in range(saved["step"]):  # the data position: the same batches, skipped
            next(batches)
        _restore_rng_states(saved["rng"])
        for step, logged in history:
            if on_step:
                on_step(step, logged)
        first_step = saved["step"] + 1
        result.resumed_from_step = saved["step"]
    model.train()
    start = time.perf_counter() - result.seconds
    progress = tqdm(range(first_step, settings.steps + 1), desc=description, disable=None, dynamic_ncols=True,
                    initial=first_step - 1, total=settings.steps)
    for step in progress:
        batch = next(batches)
        timer.start()
        mean_loss, tokens = backward_on_batch(model, batch, settings.autocast_dtype, ranks, settings.micro_batches)
        if step == 1:
            result.gradient_bytes = gradient_bytes(parameters)
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        timer.stop()
        result.losses.append(mean_loss)
        result.train_tokens += tokens
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
        history.append((step, logged))
        if on_step:
            on_step(step, logged)
        if checkpoints and checkpoints.every and step % checkpoints.every == 0 and step != settings.steps and ranks.is_main:
            result.seconds, result.step_seconds = time.perf_counter() - start, list(timer.seconds)
            checkpoints.save({"step": step, "parameters": [p.detach() for p in parameters], "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "result": asdict(result), "best_state": best_state,
                              "history": history, "rng": _rng_states()})
        progress.set_description(f"{description}|step {step}|loss {result.losses[-1]:.4f}")
    if best_state is not None:
        with torch.no_grad():
            for parameter, saved in zip(parameters, best_state, strict=True):
                parameter.copy_(saved)
    _record_measurements(result, start, timer, window)
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    return result


def _record_measurements(result: TrainResult, start: float, timer: StepTimer, window: MemoryWindow) -> None:
    """Wall time since `start`, each step's time and the window's peak memory, into `result`."""
    result.seconds = time.perf_counter() - start
    result.step_seconds = timer.seconds
    result.peak_memory_bytes = window.peak_bytes()
    result.memory_before_bytes = window.before_bytes
    result.memory_kind = window.kind


def accumulate_gradients(
    model: nn.Module,
    parameters: list[nn.Parameter],
    batches: Iterator[dict[str, torch.Tensor]],
    count: int,
    autocast_dtype: torch.dtype | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    description: str = "gradients",
    ranks: Ranks = ONE_PROCESS,
    micro_batches: int = 1,
) -> TrainResult:
    """Sum the loss gradients of `count` batches into `parameters`' `.grad` and change nothing: no
    optimizer, no optimizer state, no update (the gradient probe). Measured like `train`. Nothing to
    resume: a killed pass is cheaper to redo than a checkpoint of its gradients is to write."""
    if not parameters:
        raise ValueError("no parameters to collect gradients for")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    device = model_device(model)
    for parameter in parameters:
        parameter.grad = None
    window = MemoryWindow.start(device)
    timer = StepTimer(device)
    result = TrainResult()
    model.train()
    start = time.perf_counter()
    progress = tqdm(range(1, count + 1), desc=description, disable=None, dynamic_ncols=True)
    for step in progress:
        batch = next(batches)
        timer.start()
        # adds into .grad: after the last batch it holds the sum
        mean_loss, tokens = backward_on_batch(model, batch, autocast_dtype, ranks, micro_batches)
        timer.stop()
        result.losses.append(mean_loss)
        result.train_tokens += tokens
        if on_step:
            on_step(step, {"loss": result.losses[-1]})
    _record_measurements(result, start, timer, window)
    result.gradient_bytes = gradient_bytes(parameters)
    return result
