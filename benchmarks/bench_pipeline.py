"""End-to-end cost of each method: everything it needs, stage by stage, one process per stage.

- NeFT needs probe + score + mask + NeFT training, once per probe option (`probe.kind`);
- LoRA needs LoRA training alone (it reads only the budget the mask stage writes);
- full FT needs full training alone.
prepare_data and prepare_model are shared by all and not counted.

Each stage runs as `python -m stages.NAME` in a scratch project directory (the same command `dvc
repro` runs), with params.yaml composed from conf/ and the overrides. Reported per stage: wall
seconds of the process, its peak RSS (from wait4, loading included) and, for training stages, the
library's training-window peak (neft.measure, as in reports/train/*/summary.json). A method's wall
time is the sum over its stages, its peak the largest. The probe options' masks are also compared
with the full probe's (Jaccard; a random mask of the same k overlaps about k / (2N - k) with it).

Usage (repository root, .venv active):

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline-smollm2.json
    python benchmarks/bench_pipeline.py --override model=tiny-llama --override task=jsonl --out /tmp/pipeline-tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from neft import OFFLINE_ENVIRONMENT
from neft.analysis import jaccard
from neft.artifacts import MASK_FILE, candidate_run, train_log_dir
from neft.config import PROBE_KINDS, compose_params
from neft.masks import load_mask

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def run_stage(directory: Path, stage: str, *args: str) -> dict[str, Any]:
    """Run one stage in its own process; its wall time and peak RSS (wait4's ru_maxrss, in KiB)."""
    environment = {**os.environ, **OFFLINE_ENVIRONMENT, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", f"stages.{stage}", *args], cwd=directory, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"stages.{stage} {' '.join(args)} failed:\n{process.stderr.read().decode()[-3000:]}")
    name = " ".join([stage, *args])
    row = {"stage": name, "seconds": round(seconds, 1), "process_peak_mb": round(usage.ru_maxrss * 1024 / MB, 1)}
    if stage == "train":
        run = args[0] if len(args) == 1 else candidate_run(args[0], float(args[1]))
        summary = json.loads((directory / train_log_dir(run) / "summary.json").read_text())
        row["training_window_peak_mb"] = summary["peak_memory_mb"]
    return row


def measure(directory: Path, params: dict[str, Any], probe_kinds: list[str],
            lora_probe_learning_rate: float) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(stage rows, method rows, Jaccard of each probe option's mask with the full probe's)."""
    def write_params(probe_kind: str) -> None:
        probe = {**params["probe"], "kind": probe_kind}
        if probe_kind == "lora":  # adapters start at zero and want a LoRA-sized step
            probe["learning_rate"] = lora_probe_learning_rate
        (directory / "params.yaml").write_text(yaml.safe_dump({**params, "probe": probe}))

    write_params("full")
    for stage in ("prepare_data", "prepare_model"):
        run_stage(directory, stage)
    stages, methods, masks = [], [], {}
    for probe_kind in probe_kinds:
        write_params(probe_kind)
        rows = [run_stage(directory, "train", "probe"), run_stage(directory, "score"), run_stage(directory, "mask")]
        masks[probe_kind] = load_mask(directory / MASK_FILE)
        if probe_kind == "full":  # the NeFT step and the baselines are the same whichever probe chose the mask
            # Each method at the first rate of its grid: the rate does not change what a step costs.
            training = {method: run_stage(directory, "train", method, str(params["methods"][method]["learning_rates"][0]))
                        for method in ("neft", "lora", "full")}
            stages += [{**row, "probe_kind": "-"} for row in training.values()]
        stages += [{**row, "probe_kind": probe_kind} for row in rows]
        methods.append(("neft", probe_kind, [*rows, training["neft"]]))
    methods += [("lora", "-", [training["lora"]]), ("full", "-", [training["full"]])]
    method_rows = []
    for method, probe_kind, rows in methods:
        method_rows.append({
            "method": method, "probe_kind": probe_kind, "stages": " + ".join(row["stage"] for row in rows),
            "seconds": round(sum(row["seconds"] for row in rows), 1),
            "process_peak_mb": max(row["process_peak_mb"] for row in rows),
            "training_window_peak_mb": max(row.get("training_window_peak_mb", 0.0) for row in rows),
        })
    table = pd.DataFrame(method_rows)
    lora = table[table["method"] == "lora"].iloc[0]
    for column in ("seconds", "process_peak_mb", "training_window_peak_mb"):
        table[f"{column}_vs_lora"] = (table[column] / lora[column]).round(2)
    overlaps = {kind: round(jaccard(masks["full"], mask), 4) for kind, mask in masks.items()}
    full = masks["full"]
    k, pool = full.num_neurons, full.shape.num_layers * full.shape.d_ff * len(full.indices)
    overlaps["random mask (expected)"] = round(k / (2 * pool - k), 4)
    return pd.DataFrame(stages), table, overlaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--override", action="append", default=[], help="Hydra override, repeatable (e.g. model=tiny-llama)")
    parser.add_argument("--probe-kinds", nargs="+", default=list(PROBE_KINDS), choices=PROBE_KINDS)
    parser.add_argument("--out", type=Path, required=True, help="JSON results; a Markdown table is written beside it")
    parser.add_argument("--lora-probe-learning-rate", type=float, default=5e-4)
    parser.add_argument("--scratch", type=Path, default=None, help="where the scratch project goes (default: system temp)")
    args = parser.parse_args()
    if args.probe_kinds[0] != "full":
        parser.error("--probe-kinds must start with full: the other options are compared with it")
    params = compose_params(args.override)
    directory = Path(tempfile.mkdtemp(prefix="neft-bench-pipeline-", dir=args.scratch))
    try:
        if (ROOT / "data/custom").is_dir():
            shutil.copytree(ROOT / "data/custom", directory / "data/custom")
        stages, methods, overlaps = measure(directory, params, args.probe_kinds, args.lora_probe_learning_rate)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {"model": params["model"]["name"], "task": params["task"]["name"], "overrides": args.override,
              "probe": params["probe"], "lora_probe_learning_rate": args.lora_probe_learning_rate, "train": params["train"],
              "stages": stages.to_dict("records"),
              "methods": methods.to_dict("records"), "jaccard_with_full_probe_mask": overlaps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markdown = ["## Per method (end to end)", "", methods.to_markdown(index=False, floatfmt=".4g"), "",
                "## Per stage", "", stages.to_markdown(index=False, floatfmt=".4g"), "",
                "## Mask overlap with the full probe's (Jaccard)", "", json.dumps(overlaps), ""]
    args.out.with_suffix(".md").write_text("\n".join(markdown))
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
