"""The memory plan (neft.memory_plan): what one process of each training run will hold, before launch.

Usage:
    python scripts/memory_plan.py                                   # conf/'s default (SmolLM2, 1 process)
    python scripts/memory_plan.py -S model=tiny-llama -S task=jsonl --processes 1 2
    python scripts/memory_plan.py -S model=llama2-7b-chat -S task=wmt19-en-zh --shape llama2-7b \
        --processes 1 8 --strategies ddp fsdp --capacity-gib 80
    python scripts/memory_plan.py --measure                         # + a CPU measurement of the activations

-S composes conf/ as `dvc exp run -S` does. The model's shape comes from its prepared checkpoint
(artifacts/model) or its source; --shape uses a published one instead (for a hub model this machine
cannot download). Every sequence is taken at task.max_length and every token as a label: the most a
batch can need. --measure runs one step of a random-init model of the shape on this CPU and prints
the measured activation peak beside the plan's. Prints a Markdown table; --out also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from neft.artifacts import BASE_MODEL_DIR
from neft.config import Config, compose_config
from neft.errors import UserError
from neft.memory_plan import (
    GIB,
    SHAPES,
    activation_peak_bytes,
    as_json,
    calibration_batch,
    method_spec,
    model_architecture,
    plan_config,
    planned_autocast,
    render,
    set_up,
    workload,
)
from neft.methods import TRAINING_RUNS
from neft.models import torch_dtype


def measured_activations(args: argparse.Namespace, config: Config, architecture: PretrainedConfig, processes: int) -> dict[str, float]:
    """GiB of activations one step of each run holds on this CPU, with and without checkpointing."""
    measured = {}
    batch_shape = workload(config, processes)
    batch = calibration_batch(batch_shape.sequences, batch_shape.sequence_length, batch_shape.sequence_length,
                              architecture.vocab_size)
    for run in args.runs:
        for checkpointed in (False, True):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(architecture, dtype=torch_dtype(config.model.dtype))
            if checkpointed:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model, parameters = set_up(model, method_spec(run, config))
            model.train()
            peak = activation_peak_bytes(model, parameters, batch, planned_autocast(config.runtime))
            measured[f"{method_spec(run, config).setup}/{checkpointed}"] = peak / GIB
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="a Hydra override, as for dvc exp run")
    parser.add_argument("--processes", type=int, nargs="+", help="process counts to plan (default: runtime.processes)")
    parser.add_argument("--strategies", nargs="+", choices=("ddp", "fsdp"), help="default: runtime.strategy")
    parser.add_argument("--runs", nargs="+", choices=TRAINING_RUNS, default=list(TRAINING_RUNS))
    parser.add_argument("--shape", choices=sorted(SHAPES), help="plan this published shape instead of the model's")
    parser.add_argument("--capacity-gib", type=float, help="GPU memory per process: adds a fits column")
    parser.add_argument("--measure", action="store_true", help="also measure the activations on this CPU")
    parser.add_argument("--out", type=Path, help="write the plan as JSON here")
    args = parser.parse_args()
    try:
        config = compose_config(args.overrides)
        if args.shape:
            architecture = AutoConfig.for_model(**SHAPES[args.shape])
        else:
            architecture = model_architecture(config.model, BASE_MODEL_DIR)
        rows = []
        for processes in args.processes or [config.runtime.world_size]:
            if config.train.batch_size % processes:
                raise UserError(f"--processes {processes}: train.batch_size = {config.train.batch_size} must be a multiple of it")
            rows += plan_config(config, architecture, processes, args.runs, args.strategies)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    capacity = round(args.capacity_gib * GIB) if args.capacity_gib else None
    shape = args.shape or config.model.name
    print(f"## Memory plan: {shape}, {config.model.dtype}, batch {config.train.batch_size} x {config.task.max_length} tokens\n")
    print(render(rows, capacity))
    result = {"shape": shape, "overrides": args.overrides, "rows": as_json(rows)}
    if args.measure:
        measured = measured_activations(args, config, architecture, rows[0].processes)
        print("\n| method | checkpointing | planned activations GiB | measured GiB | planned / measured |\n|---|---|---|---|---|")
        for row in rows:
            key = f"{row.method}/{row.gradient_checkpointing}"
            if key in measured and row.strategy in ("none", rows[0].strategy):
                ratio = row.activation_bytes / GIB / measured[key]
                planned = row.activation_bytes / GIB
                print(f"| {row.method} | {row.gradient_checkpointing} | {planned:.3f} | {measured[key]:.3f} | {ratio:.2f} |")
        result["measured_activation_gib"] = measured
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
