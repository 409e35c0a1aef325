"""Stage export@METHOD: the trained model as a plain transformers directory, to take away.

Usage: python -m stages.export METHOD     (METHOD in full, neft, lora)
Writes artifacts/export/METHOD: safetensors weights + config + tokenizer, with NeFT's delta or
LoRA's adapter merged in, loadable by `AutoModelForCausalLM.from_pretrained` alone. For NeFT also
`lora_adapter/`: the same rows and columns as an exactly equivalent PEFT LoRA adapter, for serving
stacks that load LoRA adapters onto the base model.
"""

from __future__ import annotations

import time
from typing import Any

from neft.artifacts import BASE_MODEL_DIR, chosen_run, export_dir, weights_dir
from neft.config import Config, ConfigError
from neft.delta import load_delta
from neft.export import export_lora_adapter
from neft.io import atomic_directory, write_json
from neft.methods import METHODS, load_trained_model
from neft.models import load_model, load_tokenizer, save_model, torch_dtype
from stages._common import run_stage

LORA_ADAPTER = "lora_adapter"


def export(method: str, config: Config) -> dict[str, Any]:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {METHODS}")
    start = time.perf_counter()
    dtype = torch_dtype(config.model.dtype)
    trained = weights_dir(chosen_run(method))
    model = load_trained_model(method, BASE_MODEL_DIR, trained, dtype)
    summary: dict[str, Any] = {"method": method, "run": chosen_run(method), "dtype": str(dtype).removeprefix("torch.")}
    with atomic_directory(export_dir(method)) as scratch:
        save_model(model, load_tokenizer(BASE_MODEL_DIR), scratch)
        if method == "neft":
            ranks = export_lora_adapter(load_model(BASE_MODEL_DIR, dtype), load_delta(trained), scratch / LORA_ADAPTER)
            summary["lora_adapter"] = {"matrices": len(ranks), "max_rank": max(ranks.values()), "ranks": ranks}
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_json(scratch / "export_summary.json", summary)
    return summary


if __name__ == "__main__":
    run_stage(export, usage="METHOD", argc=1)
