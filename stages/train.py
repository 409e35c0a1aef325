"""Stages probe and train_METHOD@RATE: the probe (a short fine-tune), or one method at one rate of its grid.

Usage: python -m stages.train probe
       python -m stages.train METHOD RATE     (METHOD in full, neft, lora; dvc.yaml runs each RATE of
                                               methods.METHOD.learning_rates; a one-rate grid needs none)
Writes artifacts/probe or artifacts/train/METHOD/lrRATE (weights, delta or adapter) and
reports/train/probe or reports/train/METHOD/lrRATE (dvclive step logs and summary.json). The loop is
the library's one `train`; runs differ only in which parameters train (`neft.methods.setup_method`),
how the result is saved, and the rate. With `runtime.processes` > 1 the stage reruns itself under
torchrun (neft.distributed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
from dvclive import Live

from neft.artifacts import (
    BASE_MODEL_DIR,
    BUDGET_FILE,
    DATA_DIR,
    MASK_FILE,
    candidate_run,
    checkpoint_dir,
    read_budget,
    train_log_dir,
    validation_file,
    weights_dir,
)
from neft.config import Config, ConfigError, TrainConfig
from neft.data.records import read_jsonl
from neft.distributed import Ranks, full_state_dict, process_group, rank_device, relaunched, wrap_for_training
from neft.io import atomic_directory, write_json
from neft.masks import ModelShape, load_mask, validate_mask
from neft.measure import device_description
from neft.methods import TRAINING_RUNS, Method, SetupInputs, TrainableModel, setup_method, training_run_method
from neft.models import count_parameters, load_model, load_tokenizer, torch_dtype
from neft.provenance import file_sha256, model_fingerprint, record_fingerprint, require_same, write_made_from
from neft.runtime import autocast_dtype, resolve_device, setup_runtime
from neft.tokenization import encode_counted, evaluation_batches, training_batches
from neft.training import Checkpoints, TrainResult, TrainSettings, accumulate_gradients
from neft.training import train as train_loop
from stages._common import run_stage


def setup_inputs(method: Method, run: str, model: torch.nn.Module, config: Config) -> SetupInputs:
    """What `method` needs from this pipeline, and only that (each param read is a DVC dependency):
    the mask with the fingerprints it is recorded with, the budget LoRA's rank matches, or a probe's settings."""
    inputs = SetupInputs()
    if "mask" in method.needs:
        mask = load_mask(MASK_FILE)
        validate_mask(mask, ModelShape.of(model))
        inputs = dataclasses.replace(inputs, mask=mask, base_model=config.model.name,
                                     made_from={"base_model": model_fingerprint(BASE_MODEL_DIR), "mask": file_sha256(MASK_FILE)})
    if "budget" in method.needs:
        inputs = dataclasses.replace(inputs, budget=read_budget())
    if method.settings is not None:  # methods.<run>: the method's settings (only those it reads are dependencies)
        inputs = dataclasses.replace(inputs, settings=getattr(config.methods, run))
    if method.role == "probe":
        inputs = dataclasses.replace(inputs, kinds=tuple(config.mask.kinds), probe_rank=config.probe.lora_rank,
                                     probe_step_size=config.probe.learning_rate)
    return inputs


def train_settings(config: Config, learning_rate: float, steps: int) -> TrainSettings:
    """Loop settings shared by every method; only the learning rate (and the probe's steps) differ."""
    train: TrainConfig = config.train
    return TrainSettings(
        steps=steps,
        learning_rate=learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        max_grad_norm=train.max_grad_norm,
        eval_every=train.eval_every,
        autocast_dtype=autocast_dtype(config.runtime),
        micro_batches=train.gradient_accumulation,
    )


def learning_rate_and_steps(method: str, rate: str | None, config: Config) -> tuple[float, int]:
    """The probe's rate and steps, or `method`'s at `rate` (as the command line gives it: dvc.yaml passes
    each rate of the grid, and the stage reads no grid, so a rate added to it reruns nothing else).
    Without `rate`, a one-rate grid's rate."""
    if method == "probe":
        if rate is not None:
            raise ConfigError(f"the probe trains at probe.learning_rate; drop the rate {rate!r}")
        return config.probe.learning_rate, config.probe.steps
    if rate is None:
        grid = getattr(config.methods, method).learning_rates
        if len(grid) > 1:
            raise ConfigError(f"methods.{method}.learning_rates has {len(grid)} rates: give one, "
                              f"python -m stages.train {method} RATE (dvc repro train_{method} runs them all)")
        return grid[0], config.train.steps
    try:
        learning_rate = float(rate)
    except ValueError:
        learning_rate = math.nan
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ConfigError(f"the learning rate of {method} must be a number > 0, got {rate!r}")
    return learning_rate, config.train.steps


def train(method: str, *args: str) -> dict[str, Any]:
    """Train one run (the probe, or a method at one rate), save its weights/delta/adapter, log steps with dvclive."""
    *rate, config = args
    if method not in TRAINING_RUNS:
        raise ConfigError(f"unknown training run {method!r}; choose one of {TRAINING_RUNS}")
    learning_rate, steps = learning_rate_and_steps(method, rate[0] if rate else None, config)
    run = "probe" if method == "probe" else candidate_run(method, learning_rate)
    chosen = training_run_method(method, config)
    # Fail on a bad mask or budget before loading anything heavy.
    if "mask" in chosen.needs:
        require_same(f"the mask {MASK_FILE}", load_mask(MASK_FILE).made_from.get("base_model"), model_fingerprint(BASE_MODEL_DIR),
                     f"the base model in {BASE_MODEL_DIR}")
    if "budget" in chosen.needs:
        read_budget()
    require_memory_fits(method, config)
    # Everything was checked above; under torchrun the processes do the work and rank 0 writes the results.
    if (summary := relaunched(config.runtime, "stages.train", [method, *rate], train_log_dir(run) / "summary.json")) is not None:
        return summary
    settings = train_settings(config, learning_rate, steps)
    ranks = Ranks.from_environment()
    device = rank_device(setup_runtime(config.runtime), ranks)
    with process_group(ranks, device):
        return _train(method, chosen, run, config, ranks, device, settings)


def _train(method: str, chosen: Method, run: str, config: Config, ranks: Ranks, device: torch.device,
           settings: TrainSettings) -> dict[str, Any]:
    seed = config.seed
    tokenizer = load_tokenizer(BASE_MODEL_DIR)
    max_length = config.task.max_length
    train_items, train_dropped = encode_counted(tokenizer, read_jsonl(DATA_DIR / "train.jsonl"), max_length, str(DATA_DIR / "train.jsonl"))
    valid_items, valid_dropped = encode_counted(tokenizer, read_jsonl(DATA_DIR / "valid.jsonl"), max_length, str(DATA_DIR / "valid.jsonl"))
    batch_size = config.train.batch_size

    torch.manual_seed(seed)
    trainable, total = load_and_set_up(chosen, method, config, device)
    sharded = ranks.distributed and config.runtime.strategy == "fsdp"
    log_dir = train_log_dir(run)
    # Everything this run's result depends on (params this stage reads, inputs): another checkpoint is not resumed.
    recipe = {"run": run, "settings": dataclasses.asdict(settings), "seed": seed, "batch_size": batch_size,
              "max_length": max_length, "dtype": config.model.dtype, "device": str(device),
              "gradient_checkpointing": config.train.gradient_checkpointing, "details": trainable.details}
    # Under FSDP a rank holds only its shards: checkpoints (rank 0's file) would not resume them.
    checkpoints = Checkpoints(checkpoint_dir(run), 0 if sharded else config.train.checkpoint_every,
                              run_fingerprint(chosen, recipe))
    batches = map(ranks.shard, training_batches(train_items, batch_size, tokenizer.pad_token_id, seed))
    model_in_training, parameters = wrap_for_training(trainable.model, trainable.parameters, ranks, device, config.runtime.strategy)
    checkpoints.check()  # an unreadable checkpoint fails here, before anything is written
    # The step logs and summary go to a scratch directory that replaces this run's reports only once
    # the run is saved: a failed or killed run leaves the previous reports whole.
    with atomic_directory(log_dir) if ranks.is_main else contextlib.nullcontext() as log_scratch:
        with Live(dir=str(log_scratch), save_dvc_exp=False, dvcyaml=None) if ranks.is_main else contextlib.nullcontext() as live:
            on_step = _dvclive_logger(live) if ranks.is_main else None
            if not chosen.trains:  # the gradient probe: one pass, nothing to resume
                result = accumulate_gradients(model_in_training, parameters, batches, settings.steps, settings.autocast_dtype,
                                              on_step=on_step, description=run, ranks=ranks, micro_batches=settings.micro_batches)
            else:
                result = train_loop(model_in_training, parameters, batches, settings,
                                    evaluation_batches(valid_items, batch_size, tokenizer.pad_token_id),
                                    on_step=on_step, description=run, checkpoints=checkpoints, ranks=ranks)
        summary = run_summary(run, method, config, settings, trainable, total, result, (train_dropped, valid_dropped), device, ranks)
        if sharded:  # gather the shards into an unsharded copy on rank 0, which saves it as one process would
            state = full_state_dict(model_in_training)
            if ranks.is_main:
                trainable, _ = load_and_set_up(chosen, method, config, torch.device("cpu"))
                trainable.model.load_state_dict(state)
        if not ranks.is_main:  # every rank holds the same result; rank 0 writes it
            return summary
        with atomic_directory(weights_dir(run)) as scratch:
            trainable.save(scratch)
            # The selection records the chosen run's fingerprint, so evaluation reruns exactly when its weights change.
            summary["weights_sha256"] = record_fingerprint(scratch)
            if "budget" in chosen.needs:
                write_made_from(scratch, {"base_model": model_fingerprint(BASE_MODEL_DIR), "budget": file_sha256(BUDGET_FILE)})
            if chosen.role == "method":
                write_json(scratch / validation_file(run).name, {key: summary[key] for key in ("best_valid_loss", "best_step")})
        # The summary, with its timings, goes to reports/ only: the weights directory, which later stages
        # depend on, holds nothing that differs between two runs of the same weights.
        write_json(log_scratch / "summary.json", summary)
    checkpoints.remove()
    return summary


def run_summary(run: str, method: str, config: Config, settings: TrainSettings, trainable: TrainableModel, total: int,
                result: TrainResult, dropped: tuple[int, int], device: torch.device, ranks: Ranks) -> dict[str, Any]:
    """What a run reports: its settings, size, time, memory and losses (reports/train/RUN/summary.json)."""
    return {
        "run": run,
        "method": method,
        "seed": config.seed,
        "learning_rate": settings.learning_rate,
        "steps": settings.steps,
        "batch_size": config.train.batch_size,
        "trainable_parameters": trainable.trainable_parameters,
        "total_parameters": total,
        "trainable_percent": 100 * trainable.trainable_parameters / total,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds / settings.steps, 4),
        "train_tokens": result.train_tokens,
        # Examples whose prompt alone fills task.max_length: left out, and counted here.
        "train_examples_dropped": dropped[0],
        "valid_examples_dropped": dropped[1],
        "step_seconds_median": round(statistics.median(result.step_seconds), 4),
        "peak_memory_mb": round(result.peak_memory_bytes / 2**20, 1),
        "peak_memory_kind": result.memory_kind,
        "optimizer_state_mb": round(result.optimizer_state_bytes / 2**20, 1),
        "first_loss": result.losses[0],
        "final_loss": result.losses[-1],
        "best_step": result.best_step,
        "best_valid_loss": result.best_valid_loss if result.valid_losses else None,  # none for the gradient probe
        "resumed_from_step": result.resumed_from_step,
        "device": str(device),
        "hardware": device_description(device),
        "processes": ranks.world_size,
        "strategy": config.runtime.strategy if ranks.distributed else "none",
        "autocast": str(settings.autocast_dtype).removeprefix("torch.") if settings.autocast_dtype else "none",
        **trainable.details,
    }


def require_memory_fits(method: str, config: Config) -> None:
    """On a GPU, refuse a run that the memory plan (neft.memory_plan) says will not fit in one
    process's GPU, with the plan, before anything loads or launches."""
    if resolve_device(config.runtime).type != "cuda":
        return
    from neft.memory_plan import model_architecture, plan_config, require_fits  # on a GPU only: 460 lines

    architecture = model_architecture(config.model, BASE_MODEL_DIR)
    row = plan_config(config, architecture, runs=[method], checkpointing=(config.train.gradient_checkpointing,))[0]
    require_fits(row, torch.cuda.get_device_properties(0).total_memory, f"train@{method}")


def load_and_set_up(method: Method, run: str, config: Config, device: torch.device) -> tuple[TrainableModel, int]:
    """The base model on `device`, set up for `method` (training run `run`), and its parameter count
    before adapters or deltas."""
    model = load_model(BASE_MODEL_DIR, torch_dtype(config.model.dtype)).to(device)
    if config.train.gradient_checkpointing:
        # Non-reentrant: recomputes NeFT's custom autograd function correctly, also under DDP and FSDP.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    total = count_parameters(model)
    return setup_method(method.name, model, setup_inputs(method, run, model, config)), total


def run_fingerprint(method: Method, recipe: dict[str, Any]) -> str:
    """What a run is made of: its recipe and the identity (path, size, modification time) of every
    input file. Identity rather than content: hashing a 7B model's shards at every start would cost
    minutes, and DVC rewrites a changed input, which changes its modification time."""
    inputs = [DATA_DIR / "train.jsonl", DATA_DIR / "valid.jsonl", *sorted(BASE_MODEL_DIR.iterdir())]
    inputs += [MASK_FILE] * ("mask" in method.needs) + [BUDGET_FILE] * ("budget" in method.needs)
    identity = [recipe] + [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in inputs]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _dvclive_logger(live: Live) -> Callable[[int, dict[str, float]], None]:
    def log(step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            live.log_metric(name, value, plot=True)
        live.next_step()

    return log


if __name__ == "__main__":
    run_stage(train, usage="probe | METHOD RATE", argc=(1, 2))
