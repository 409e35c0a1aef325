"""Glue between the composed params and the library: where each stage's artifacts live, and the
per-stage functions that `stages/*.py` call. Paths are relative to the project root (DVC runs
every stage there).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from dvclive import Live

from neft.analysis import (
    delta_rank_groups,
    jaccard,
    layer_mean_hidden_states,
    neuron_utilisation,
    plot_score_histogram,
    plot_selection_heatmap,
    trained_flags,
)
from neft.config import ConfigError, autocast_dtype, resolve_device, train_settings, validate_ratio
from neft.data.records import read_jsonl, write_jsonl
from neft.data.sources import SPLITS, build_splits, validate_task_config
from neft.evaluation import generate_greedy, task_metrics
from neft.io import atomic_directory, read_json, write_json
from neft.masks import (
    MaskError,
    ModelShape,
    build_mask,
    build_mask_with_ties,
    load_mask,
    save_mask,
    summarize_mask,
    validate_mask,
)
from neft.methods import (
    EVAL_METHODS,
    METHODS,
    TrainableModel,
    full_finetuning,
    load_trained_model,
    lora_finetuning,
    lora_parameters_per_rank,
    lora_rank_for_budget,
    neft_finetuning,
)
from neft.models import count_parameters, load_model, load_source_model, load_tokenizer, save_model, torch_dtype, validate_model_config
from neft.neurons import SCORE_FORMS, resolve_kinds, score_neurons, score_resolution
from neft.tokenization import encode_all, encode_prompts, evaluation_batches, training_batches
from neft.training import train

DATA_DIR = Path("data/prepared")
BASE_MODEL_DIR = Path("artifacts/model")
MODEL_SHAPE_FILE = BASE_MODEL_DIR / "neft_shape.json"
PROBE_DIR = Path("artifacts/probe")
SCORES_DIR = Path("artifacts/scores")
MASK_DIR = Path("artifacts/mask")
MASK_FILE = MASK_DIR / "mask.json"
# The budget alone (k and its parameter count), apart from which neurons: the matched LoRA depends on
# this file only, so a control mask (`mask.strategy`) at the same ratio does not retrain LoRA.
BUDGET_FILE = Path("artifacts/budget.json")
REPORTS_DIR = Path("reports")
# The mask stage warns when the tie-break at the cutoff chose more than this share of k.
TIEBREAK_WARNING_SHARE = 0.001
logger = logging.getLogger(__name__)
TRAINING_RUNS = ("probe", *METHODS)


def weights_dir(run: str) -> Path:
    return PROBE_DIR if run == "probe" else Path("artifacts/train") / run


def train_log_dir(run: str) -> Path:
    return REPORTS_DIR / "train" / run


def eval_dir(method: str) -> Path:
    return REPORTS_DIR / "eval" / method


# --- prepare ---------------------------------------------------------------------------------


def prepare_data(params: dict[str, Any], out_dir: Path = DATA_DIR) -> dict[str, Any]:
    splits = build_splits(params["task"], params["seed"])
    summary = {"task": params["task"]["name"], "seed": params["seed"], **{f"{s}_examples": len(splits[s]) for s in SPLITS}}
    with atomic_directory(out_dir) as scratch:
        for split in SPLITS:
            write_jsonl(scratch / f"{split}.jsonl", splits[split])
        write_json(scratch / "summary.json", summary)
    return summary


def prepare_model(params: dict[str, Any], out_dir: Path = BASE_MODEL_DIR) -> dict[str, Any]:
    validate_model_config(params["model"])
    start = time.perf_counter()
    model, tokenizer = load_source_model(params["model"], params["seed"])
    shape = ModelShape.of(model)
    with atomic_directory(out_dir) as scratch:
        save_model(model, tokenizer, scratch)
        write_json(scratch / MODEL_SHAPE_FILE.name, vars(shape))
    return {"model": params["model"]["name"], **vars(shape), "seconds": round(time.perf_counter() - start, 1)}


def read_model_shape(model_dir: Path = BASE_MODEL_DIR) -> ModelShape:
    return ModelShape(**read_json(model_dir / MODEL_SHAPE_FILE.name))


# --- score and mask --------------------------------------------------------------------------


def score_stage(params: dict[str, Any], out_dir: Path = SCORES_DIR) -> dict[str, Any]:
    kinds = params["mask"]["kinds"]
    resolve_kinds(kinds)
    form = params["score"]["form"]
    if form not in SCORE_FORMS:
        raise ConfigError(f"score.form={form!r} is unknown; choose one of {SCORE_FORMS}")
    start = time.perf_counter()
    scores = score_neurons(BASE_MODEL_DIR, PROBE_DIR, kinds, form=form)
    seconds = time.perf_counter() - start
    summary = {"neurons": len(scores), "form": form, "seconds": round(seconds, 3), **score_resolution(scores)}
    with atomic_directory(out_dir) as scratch:
        scores.to_parquet(scratch / "scores.parquet", index=False)
        write_json(scratch / "summary.json", summary)
    return summary


def mask_stage(params: dict[str, Any], out_dir: Path = MASK_DIR, budget_file: Path = BUDGET_FILE) -> dict[str, Any]:
    ratio = validate_ratio(params["ratio"])
    scores = pd.read_parquet(SCORES_DIR / "scores.parquet")
    mask, ties = build_mask_with_ties(scores, read_model_shape(), ratio, params["mask"]["strategy"], params["seed"])
    summary = {**summarize_mask(mask), "tied_at_cutoff": ties.tied_at_cutoff, "decided_by_tiebreak": ties.decided_by_tiebreak}
    if ties.decided_by_tiebreak > TIEBREAK_WARNING_SHARE * mask.num_neurons:
        logger.warning(
            "warning: %d of the mask's %d neurons were chosen by position, not score (%d neurons tie at the cutoff); "
            "the scores do not resolve the ranking: use score.form=stable or a probe that changes the weights more",
            ties.decided_by_tiebreak, mask.num_neurons, ties.tied_at_cutoff)
    with atomic_directory(out_dir) as scratch:
        save_mask(mask, scratch / MASK_FILE.name)
        write_json(scratch / "summary.json", summary)
    write_json(budget_file, {"ratio": ratio, "num_neurons": mask.num_neurons, "trainable_parameters": mask.trainable_parameters})
    return summary


def read_budget(path: Path = BUDGET_FILE) -> int:
    """NeFT's trainable-parameter count, which the matched LoRA must meet."""
    if not path.is_file():
        raise MaskError(f"{path} is missing: run the mask stage first (dvc repro mask)")
    budget = read_json(path).get("trainable_parameters")
    if not isinstance(budget, int) or budget <= 0:
        raise MaskError(f"{path}: trainable_parameters must be a positive integer, got {budget!r}")
    return budget


# --- training --------------------------------------------------------------------------------


def setup_method(run: str, model: torch.nn.Module, params: dict[str, Any]) -> TrainableModel:
    """Make `model` trainable the way `run` wants; the loop afterwards is the same for all."""
    if run in ("probe", "full"):
        return full_finetuning(model)
    if run == "neft":
        mask = load_mask(MASK_FILE)
        validate_mask(mask, ModelShape.of(model))
        return neft_finetuning(model, mask, {"base_model": params["model"]["name"], "kinds": params["mask"]["kinds"]})
    if run == "lora":
        budget = read_budget()
        rank = lora_rank_for_budget(model, budget)
        per_rank = lora_parameters_per_rank(model)  # before peft wraps the linear layers
        lora = params["methods"]["lora"]
        trainable = lora_finetuning(model, rank, lora["alpha"], lora["dropout"])
        trainable.details.update(neft_budget=budget, parameters_per_rank=per_rank)
        return trainable
    raise ConfigError(f"unknown training run {run!r}; choose one of {TRAINING_RUNS}")


def learning_rate_and_steps(run: str, params: dict[str, Any]) -> tuple[float, int]:
    if run == "probe":
        return params["probe"]["learning_rate"], params["probe"]["steps"]
    return params["methods"][run]["learning_rate"], params["train"]["steps"]


def train_stage(run: str, params: dict[str, Any]) -> dict[str, Any]:
    """Train one run (probe or a method), save its weights/delta/adapter, log steps with dvclive."""
    if run not in TRAINING_RUNS:
        raise ConfigError(f"unknown training run {run!r}; choose one of {TRAINING_RUNS}")
    # Fail on a bad mask or budget before loading anything heavy.
    if run == "neft":
        load_mask(MASK_FILE)
    if run == "lora":
        read_budget()
    learning_rate, steps = learning_rate_and_steps(run, params)
    settings = train_settings(params, learning_rate, steps)
    device = resolve_device(params["runtime"])
    seed = params["seed"]
    tokenizer = load_tokenizer(BASE_MODEL_DIR)
    max_length = params["task"]["max_length"]
    train_items = encode_all(tokenizer, read_jsonl(DATA_DIR / "train.jsonl"), max_length)
    valid_items = encode_all(tokenizer, read_jsonl(DATA_DIR / "valid.jsonl"), max_length)
    batch_size = params["train"]["batch_size"]

    torch.manual_seed(seed)
    model = load_model(BASE_MODEL_DIR, torch_dtype(params["model"]["dtype"])).to(device)
    if params["train"]["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    total = count_parameters(model)  # before adapters or deltas add their own
    trainable = setup_method(run, model, params)
    log_dir = train_log_dir(run)
    with Live(dir=str(log_dir), save_dvc_exp=False, dvcyaml=None) as live:
        result = train(
            trainable.model,
            trainable.parameters,
            training_batches(train_items, batch_size, tokenizer.pad_token_id, seed),
            settings,
            evaluation_batches(valid_items, batch_size, tokenizer.pad_token_id),
            on_step=_dvclive_logger(live),
            description=run,
        )
    summary = {
        "run": run,
        "seed": seed,
        "learning_rate": learning_rate,
        "steps": steps,
        "batch_size": batch_size,
        "trainable_parameters": trainable.trainable_parameters,
        "total_parameters": total,
        "trainable_percent": 100 * trainable.trainable_parameters / total,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds / steps, 4),
        "train_tokens": result.train_tokens,
        "peak_memory_mb": round(result.peak_memory_bytes / 2**20, 1),
        "first_loss": result.losses[0],
        "final_loss": result.losses[-1],
        "best_step": result.best_step,
        "best_valid_loss": result.best_valid_loss,
        "device": str(device),
        "autocast": str(settings.autocast_dtype).removeprefix("torch.") if settings.autocast_dtype else "none",
        **trainable.details,
    }
    with atomic_directory(weights_dir(run)) as scratch:
        trainable.save(scratch)
        write_json(scratch / "train_summary.json", summary)
    write_json(log_dir / "summary.json", summary)
    return summary


def _dvclive_logger(live: Live) -> Callable[[int, dict[str, float]], None]:
    def log(step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            live.log_metric(name, value, plot=True)
        live.next_step()

    return log


# --- evaluation ------------------------------------------------------------------------------


def evaluate_stage(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Greedy-decode the test split with `method`'s model and score it against the references."""
    if method not in EVAL_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {EVAL_METHODS}")
    validate_task_config(params["task"])
    device = resolve_device(params["runtime"])
    examples = read_jsonl(DATA_DIR / "test.jsonl")
    tokenizer = load_tokenizer(BASE_MODEL_DIR)
    trained = None if method == "base" else weights_dir(method)
    model = load_trained_model(method, BASE_MODEL_DIR, trained, torch_dtype(params["model"]["dtype"])).to(device)
    start = time.perf_counter()
    predictions = generate_greedy(
        model,
        tokenizer,
        [example.prompt for example in examples],
        params["task"]["max_new_tokens"],
        params["evaluate"]["batch_size"],
        autocast_dtype(params["runtime"]),
    )
    seconds = time.perf_counter() - start
    task = params["task"]
    metrics = task_metrics(task["kind"], predictions, [e.target for e in examples], **task["metric_options"])
    metrics.update(method=method, test_examples=len(examples), generate_seconds=round(seconds, 1))
    out = eval_dir(method)
    with atomic_directory(out) as scratch:
        rows = [{"id": e.id, "prompt": e.prompt, "reference": e.target, "prediction": p} for e, p in zip(examples, predictions)]
        pd.DataFrame(rows).to_json(scratch / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
        write_json(scratch / "metrics.json", metrics)
    return metrics


# --- neuron analysis -------------------------------------------------------------------------


def analysis_stage(params: dict[str, Any], out_dir: Path = REPORTS_DIR / "analysis") -> dict[str, Any]:
    """Score histogram, mask heatmap, mask overlaps across budgets/controls, utilisation ranks base vs NeFT."""
    config = params["analysis"]
    if not 0 < config["strongly_affected_fraction"] < 1:
        raise ConfigError("analysis.strongly_affected_fraction must be in (0, 1)")
    scores = pd.read_parquet(SCORES_DIR / "scores.parquet")
    mask = load_mask(MASK_FILE)
    shape = read_model_shape()
    seed = params["seed"]
    cosine_mask = build_mask(scores, shape, mask.ratio, "cosine")
    overlaps = {f"cosine@{ratio}": jaccard(mask, build_mask(scores, shape, ratio, "cosine")) for ratio in config["compare_ratios"]}
    overlaps.update({f"{strategy}@{mask.ratio}": jaccard(mask, build_mask(scores, shape, mask.ratio, strategy, seed)) for strategy in ("cosine", "reversed", "random")})

    tokenizer = load_tokenizer(BASE_MODEL_DIR)
    examples = read_jsonl(DATA_DIR / "test.jsonl")[: config["examples"]]
    inputs = encode_prompts(tokenizer, [example.prompt for example in examples], params["task"]["max_length"])
    batches = evaluation_batches(inputs, params["evaluate"]["batch_size"], tokenizer.pad_token_id)
    dtype = torch_dtype(params["model"]["dtype"])
    device = resolve_device(params["runtime"])
    utilisation = {}
    for name, weights in (("base", None), ("neft", weights_dir("neft"))):
        model = load_trained_model(name, BASE_MODEL_DIR, weights, dtype).to(device)
        means = layer_mean_hidden_states(model, batches)
        utilisation[name] = {kind: neuron_utilisation(model, means, kind).cpu().numpy() for kind in mask.indices}
    groups = {
        kind: delta_rank_groups(
            utilisation["base"][kind], utilisation["neft"][kind], trained_flags(mask, kind),
            threshold=round(config["strongly_affected_fraction"] * shape.num_layers * shape.d_ff),
        )
        for kind in sorted(mask.indices)
    }
    cutoff = float(scores["change"].nlargest(cosine_mask.num_neurons).min())
    result = {"mask_strategy": mask.strategy, "ratio": mask.ratio, "change_cutoff": cutoff, "jaccard": overlaps,
              "utilisation_base_vs_neft": groups, "test_examples": len(examples)}
    with atomic_directory(out_dir) as scratch:
        plot_score_histogram(scores, cutoff, str(scratch / "score_histogram.png"))
        plot_selection_heatmap(mask, str(scratch / "mask_heatmap.png"))
        write_json(scratch / "analysis.json", result)
    return result
