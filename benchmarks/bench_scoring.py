"""Neuron-scoring benchmark: the score stage's own `neft.neurons.score_neurons`, from disk, at a model's shape.

It writes a base and a tuned checkpoint of the shape, holding only what scoring reads (the
up_proj and down_proj weights of every layer), sharded one layer per file with an index as hub
checkpoints are; tuned = base + 1e-3 * std Gaussian noise (speed does not depend on the values).
Then it times `score_neurons(base, tuned, ["in", "out"], device)`: the first pass after writing
and the median of `--repeats` more (the page cache is warm for all of them; this script cannot
drop it). Memory: the stage streams one pair of matrices at a time, so the peak EXTRA memory
(GPU max_memory_allocated, or CPU peak RSS growth) is reported against one layer's pair of
up+down matrices in fp32, the copies the cosine needs.

Usage (repository root, .venv active):

    python benchmarks/bench_scoring.py --shape llama-7b --device cuda --out benchmarks/results/gpu-scoring-7b.json
    python benchmarks/bench_scoring.py --shape smollm2 --out benchmarks/results/cpu-scoring-smollm2.json
    python benchmarks/bench_scoring.py --shape tiny --repeats 1 --out /tmp/scoring-tiny.json

Targets (issue 3): llama-7b (32 layers, 4096 x 11008, up and down) <= 10 s on a GPU; SmolLM2
<= 2 s on CPU. The checkpoints go to a temporary directory under --scratch (11.5 GB for
llama-7b in bf16) and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bench_training import MB, _resolve_device
from neft.measure import MemoryWindow, StepTimer, device_description
from neft.neurons import DecoderLayout, resolve_kinds, score_neurons

ROOT = Path(__file__).resolve().parents[1]

KINDS = ["in", "out"]
# (layers, d_model, d_ff, target seconds, target device)
SHAPES: dict[str, tuple[int, int, int, float | None, str | None]] = {
    "llama-7b": (32, 4096, 11008, 10.0, "cuda"),
    "smollm2": (30, 576, 1536, 2.0, "cpu"),
    "tiny": (2, 64, 128, None, None),
}


def write_checkpoint_pair(base_dir: Path, tuned_dir: Path, layers: int, d_model: int, d_ff: int,
                          dtype: torch.dtype, seed: int) -> int:
    """Write base and tuned up/down weights, one shard per layer; return the bytes of one checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    total = 0
    for directory in (base_dir, tuned_dir):
        directory.mkdir(parents=True)
    maps: dict[Path, dict[str, str]] = {base_dir: {}, tuned_dir: {}}
    layout = DecoderLayout("model.layers", "mlp", layers)  # a Llama checkpoint's names
    for layer in range(layers):
        shard = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        base_tensors, tuned_tensors = {}, {}
        for kind in resolve_kinds(KINDS):
            shape = (d_ff, d_model) if kind.axis == 0 else (d_model, d_ff)
            weight = 0.02 * torch.randn(shape, generator=generator)
            noise = 1e-3 * weight.std() * torch.randn(shape, generator=generator)
            name = layout.weight_name(layer, kind)
            base_tensors[name], tuned_tensors[name] = weight.to(dtype), (weight + noise).to(dtype)
            total += base_tensors[name].numel() * base_tensors[name].element_size()
        for directory, tensors in ((base_dir, base_tensors), (tuned_dir, tuned_tensors)):
            save_file(tensors, str(directory / shard))
            maps[directory].update({name: shard for name in tensors})
    for directory, weight_map in maps.items():
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return total


def timed_scoring(base_dir: Path, tuned_dir: Path, device: torch.device) -> tuple[float, int, int]:
    """(seconds, neurons scored, peak extra bytes) of one `score_neurons` pass."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    window, timer = MemoryWindow.start(device), StepTimer(device)
    timer.start()
    frame = score_neurons(base_dir, tuned_dir, KINDS, device=str(device))
    seconds = timer.stop()
    return seconds, len(frame), max(window.peak_bytes() - window.before_bytes, 0)


def run(shape_name: str, device: torch.device, dtype: torch.dtype, repeats: int, scratch: Path | None, seed: int) -> dict[str, Any]:
    layers, d_model, d_ff, target_seconds, target_device = SHAPES[shape_name]
    workdir = Path(tempfile.mkdtemp(prefix="neft-bench-scoring-", dir=scratch))
    try:
        start = time.perf_counter()
        checkpoint_bytes = write_checkpoint_pair(workdir / "base", workdir / "tuned", layers, d_model, d_ff, dtype, seed)
        write_seconds = time.perf_counter() - start
        first_seconds, neurons, first_peak = timed_scoring(workdir / "base", workdir / "tuned", device)
        passes = [timed_scoring(workdir / "base", workdir / "tuned", device) for _ in range(repeats)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median_seconds = statistics.median([seconds for seconds, _, _ in passes]) if passes else first_seconds
    peak_extra = max([first_peak, *(peak for _, _, peak in passes)])
    one_layer_fp32 = 2 * 2 * d_model * d_ff * 4  # up + down, base + tuned, as fp32 copies
    result = {
        "shape": {"name": shape_name, "layers": layers, "d_model": d_model, "d_ff": d_ff, "dtype": str(dtype).replace("torch.", "")},
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "neurons": neurons,
        "checkpoint_bytes_each": checkpoint_bytes,
        "write_seconds": round(write_seconds, 2),
        "first_pass_seconds": round(first_seconds, 3),
        "pass_seconds": [round(seconds, 3) for seconds, _, _ in passes],
        "median_seconds": round(median_seconds, 3),
        "peak_extra_bytes": peak_extra,
        "one_layer_pair_fp32_bytes": one_layer_fp32,
        "peak_extra_over_one_layer": round(peak_extra / one_layer_fp32, 3),
    }
    if target_seconds is not None:
        result["target"] = {
            "seconds": target_seconds,
            "device": target_device,
            "measured_on_target_device": device.type == target_device,
            "holds": median_seconds <= target_seconds,
        }
    return result


def print_table(result: dict[str, Any]) -> None:
    shape, target = result["shape"], result.get("target")
    print("| shape | device | neurons | checkpoint MB (each) | first pass s | median s | peak extra MB "
          "| x one layer pair (fp32) | target |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    target_text = "-" if not target else (
        f"<= {target['seconds']} s on {target['device']}: {'holds' if target['holds'] else 'MISSED'}"
        + ("" if target["measured_on_target_device"] else " (not the target device)"))
    print(f"| {shape['name']} ({shape['layers']} x {shape['d_model']} x {shape['d_ff']}, {shape['dtype']}) | "
          f"{result['device'].get('name', result['device']['type'])} | {result['neurons']:,} | "
          f"{result['checkpoint_bytes_each'] / MB:.0f} | {result['first_pass_seconds']:.3f} | {result['median_seconds']:.3f} | "
          f"{result['peak_extra_bytes'] / MB:.0f} | {result['peak_extra_over_one_layer']:.2f} | {target_text} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="checkpoint dtype")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--scratch", type=Path, default=None, help="where the temporary checkpoints go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats < 0:
        raise SystemExit("--repeats must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.shape, _resolve_device(args.device), getattr(torch, args.dtype), args.repeats, args.scratch, args.seed)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
