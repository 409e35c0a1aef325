"""What the default can promise across machines: the same evaluation computed by other kernels,
in bf16 autocast and in fp32, side by side.

A CPU computes with the kernels its instruction set allows (oneDNN for bf16 matmuls, MKL and ATen
for fp32), and kernels of another instruction set round differently. This benchmark plays other
machines on this one by capping the instruction sets (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS,
ATEN_CPU_CAPABILITY) and runs the pipeline's own evaluation command, `python -m stages.evaluate
METHOD`, on each method's chosen model, in a scratch copy of the project's inputs. Per setting it
reports the generation time, how many predictions differ from this CPU's own kernels at the same
compute dtype, each method's BLEU, and NeFT - LoRA with its paired-bootstrap p and verdict word:
whether the answer a user reads moves with the machine.

Usage (repository root, after `dvc repro`, .venv active):

    python benchmarks/bench_kernels.py --limit 100 --out benchmarks/results/kernels-smollm2.json

Options: --methods base neft lora   --limit N (the first N test examples; all by default)
--settings NAME ... (default: all of SETTINGS below)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from neft import OFFLINE_ENVIRONMENT
from neft.artifacts import BASE_MODEL_DIR, DATA_DIR, eval_dir
from neft.config import load_config
from neft.report import verdict
from neft.significance import compare_predictions

ROOT = Path(__file__).resolve().parents[1]
# name: (runtime.autocast, environment). "native" is this CPU's own kernels.
SETTINGS: dict[str, tuple[str | None, dict[str, str]]] = {
    "bf16 native": ("bfloat16", {}),
    "bf16, oneDNN without AVX512-BF16": ("bfloat16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
    "fp32 native": (None, {}),
    "fp32, AVX2 only": (None, {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
}
INPUTS = (BASE_MODEL_DIR, Path("artifacts/train"), Path("artifacts/chosen"), Path("data/custom"))


def scratch_project(directory: Path, limit: int | None) -> None:
    """The inputs evaluation reads: links to the models, a copy of the (first `limit`) test examples."""
    for path in INPUTS:
        if (ROOT / path).exists():
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / path).symlink_to(ROOT / path)
    (directory / DATA_DIR).mkdir(parents=True)
    for split in ("train.jsonl", "valid.jsonl", "summary.json"):
        (directory / DATA_DIR / split).symlink_to(ROOT / DATA_DIR / split)
    lines = (ROOT / DATA_DIR / "test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (directory / DATA_DIR / "test.jsonl").write_text("".join(lines[:limit]), encoding="utf-8")


def evaluate(directory: Path, method: str, autocast: str | None, environment: dict[str, str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runtime"]["autocast"] = autocast
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, **OFFLINE_ENVIRONMENT, **environment, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.evaluate", method], cwd=directory, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    predictions = pd.read_json(directory / eval_dir(method) / "predictions.jsonl", lines=True, dtype=False)
    metrics = json.loads((directory / eval_dir(method) / "metrics.json").read_text())
    return predictions, {"process_seconds": round(seconds, 1), "generate_seconds": metrics["generate_seconds"], "bleu": metrics["bleu"]}


def measure(methods: list[str], settings: list[str], limit: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    config = load_config(ROOT / "params.yaml")
    options = config.task.metric_options
    rows, verdicts, predictions = [], [], {}
    with tempfile.TemporaryDirectory(prefix="neft-bench-kernels-") as scratch:
        directory = Path(scratch)
        scratch_project(directory, limit)
        for setting in settings:
            autocast, environment = SETTINGS[setting]
            for method in methods:
                predicted, row = evaluate(directory, method, autocast, environment)
                predictions[setting, method] = predicted
                native = predictions.get((f"{'bf16' if autocast else 'fp32'} native", method))
                changed = None if native is None else int((native["prediction"] != predicted["prediction"]).sum())
                rows.append({"setting": setting, "method": method, **row, "examples": len(predicted),
                             "predictions_changed_vs_native": changed})
            if {"neft", "lora"} <= set(methods):
                pair = predictions[setting, "lora"], predictions[setting, "neft"]
                for comparison in compare_predictions(config.task.kind, *pair, options):
                    verdicts.append({"setting": setting, "comparison": "neft - lora", "metric": comparison.metric,
                                     "difference": round(comparison.difference, 3), "p_value": comparison.p_value,
                                     "verdict": verdict(comparison.difference, comparison.p_value)})
    return pd.DataFrame(rows), pd.DataFrame(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["base", "neft", "lora"], choices=["base", "full", "neft", "lora"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test examples only")
    parser.add_argument("--out", type=Path, required=True, help="JSON results; a Markdown table is written beside it")
    args = parser.parse_args()
    table, verdicts = measure(args.methods, args.settings, args.limit)
    table.to_csv(sys.stdout, index=False)
    result = {"settings": {name: {"autocast": SETTINGS[name][0], "environment": SETTINGS[name][1]} for name in args.settings},
              "limit": args.limit, "evaluations": table.to_dict("records"), "verdicts": verdicts.to_dict("records")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markdown = ["## Each evaluation", "", table.to_markdown(index=False), "", "## NeFT - LoRA per setting", "",
                verdicts.to_markdown(index=False) if len(verdicts) else "(needs neft and lora)", ""]
    args.out.with_suffix(".md").write_text("\n".join(markdown))
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
