"""Stage analyze: score histogram, mask heatmap, mask overlaps across budgets and controls, and the
paper's utilisation-rank analysis of the base vs the NeFT model.

Usage: python -m stages.analyze           (writes reports/analysis/)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from neft.analysis import (
    delta_rank_groups,
    jaccard,
    layer_mean_hidden_states,
    neuron_utilisation,
    plot_score_histogram,
    plot_selection_heatmap,
    trained_flags,
)
from neft.artifacts import ANALYSIS_DIR, BASE_MODEL_DIR, DATA_DIR, MASK_FILE, MODEL_SHAPE_FILE, SCORES_FILE, chosen_run, weights_dir
from neft.config import Config
from neft.data.records import read_jsonl
from neft.io import atomic_directory, read_json, write_json
from neft.masks import ModelShape, build_mask, load_mask
from neft.methods import load_trained_model
from neft.models import load_tokenizer, torch_dtype
from neft.runtime import setup_runtime
from neft.tokenization import encode_prompts, evaluation_batches
from stages._common import run_stage


def analyze(config: Config, out_dir: Path = ANALYSIS_DIR) -> dict[str, Any]:
    analysis = config.analysis
    scores = pd.read_parquet(SCORES_FILE)
    mask = load_mask(MASK_FILE)
    shape = ModelShape(**read_json(MODEL_SHAPE_FILE))
    seed = config.seed
    cosine_mask = build_mask(scores, shape, mask.ratio, "cosine")
    overlaps = {f"cosine@{ratio}": jaccard(mask, build_mask(scores, shape, ratio, "cosine")) for ratio in analysis.compare_ratios}
    overlaps.update({f"{strategy}@{mask.ratio}": jaccard(mask, build_mask(scores, shape, mask.ratio, strategy, seed))
                     for strategy in ("cosine", "reversed", "random")})

    tokenizer = load_tokenizer(BASE_MODEL_DIR)
    examples = read_jsonl(DATA_DIR / "test.jsonl")[: analysis.examples]
    inputs = encode_prompts(tokenizer, [example.prompt for example in examples], config.task.max_length)
    batches = evaluation_batches(inputs, config.evaluate.batch_size, tokenizer.pad_token_id)
    dtype = torch_dtype(config.model.dtype)
    device = setup_runtime(config.runtime)
    utilisation = {}
    for name, weights in (("base", None), ("neft", weights_dir(chosen_run("neft")))):
        model = load_trained_model(name, BASE_MODEL_DIR, weights, dtype).to(device)
        means = layer_mean_hidden_states(model, batches)
        utilisation[name] = {kind: neuron_utilisation(model, means, kind).cpu().numpy() for kind in mask.indices}
    groups = {
        kind: delta_rank_groups(
            utilisation["base"][kind], utilisation["neft"][kind], trained_flags(mask, kind),
            threshold=round(analysis.strongly_affected_fraction * shape.num_layers * shape.d_ff),
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


if __name__ == "__main__":
    run_stage(analyze)
