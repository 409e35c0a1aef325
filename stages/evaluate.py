"""Stage evaluate@METHOD: greedy generation on the test split, BLEU/chrF or ROUGE.

Usage: python -m stages.evaluate METHOD   (METHOD in base, full, neft, lora; writes reports/eval/METHOD/)
A trained method is evaluated at the rate that validation loss chose for it (stage select) only.
With `runtime.processes` > 1 it reruns itself under torchrun; the ranks share the generation batches.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from neft.artifacts import BASE_MODEL_DIR, DATA_DIR, chosen_run, eval_dir, weights_dir
from neft.config import Config, ConfigError
from neft.data.records import read_jsonl
from neft.distributed import Ranks, process_group, rank_device, relaunched
from neft.evaluation import generate_greedy, task_metrics
from neft.io import atomic_directory, write_json
from neft.methods import EVAL_METHODS, load_trained_model
from neft.models import load_tokenizer, torch_dtype
from neft.provenance import model_fingerprint
from neft.runtime import autocast_dtype, setup_runtime
from stages._common import run_stage


def evaluate(method: str, config: Config) -> dict[str, Any]:
    """Greedy-decode the test split with `method`'s model and score it against the references."""
    if method not in EVAL_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {EVAL_METHODS}")
    if (metrics := relaunched(config.runtime, "stages.evaluate", [method], eval_dir(method) / "metrics.json")) is not None:
        return metrics
    ranks = Ranks.from_environment()
    device = rank_device(setup_runtime(config.runtime), ranks)
    with process_group(ranks, device):
        return _evaluate(method, config, ranks, device)


def _evaluate(method: str, config: Config, ranks: Ranks, device: torch.device) -> dict[str, Any]:
    task = config.task
    examples = read_jsonl(DATA_DIR / "test.jsonl")
    tokenizer = load_tokenizer(BASE_MODEL_DIR)
    trained = None if method == "base" else weights_dir(chosen_run(method))
    model = load_trained_model(method, BASE_MODEL_DIR, trained, torch_dtype(config.model.dtype)).to(device)
    start = time.perf_counter()
    predictions = generate_greedy(
        model,
        tokenizer,
        [example.prompt for example in examples],
        task.max_new_tokens,
        config.evaluate.batch_size,
        autocast_dtype(config.runtime),
        ranks,
    )
    seconds = time.perf_counter() - start
    if not ranks.is_main:  # every rank gathered every prediction; rank 0 writes them
        return {"method": method}
    metrics = task_metrics(task.kind, predictions, [e.target for e in examples], task.metric_options)
    metrics.update(method=method, test_examples=len(examples), generate_seconds=round(seconds, 1))
    # The weights these predictions came from (neft.provenance fingerprints).
    metrics["weights"] = {"base_model": model_fingerprint(BASE_MODEL_DIR), **({"trained": model_fingerprint(trained)} if trained else {})}
    with atomic_directory(eval_dir(method)) as scratch:
        rows = [
            {"id": e.id, "prompt": e.prompt, "reference": e.target, "prediction": p}
            for e, p in zip(examples, predictions, strict=True)
        ]
        pd.DataFrame(rows).to_json(scratch / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
        write_json(scratch / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    run_stage(evaluate, usage="METHOD", argc=1)
