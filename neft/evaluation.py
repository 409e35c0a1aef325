"""Greedy generation on the test split and the task metrics: sacreBLEU BLEU/chrF for translation
(plus ROUGE where `task.metric_options.rouge` asks), ROUGE-1/2/L/Lsum for summarisation, with a
tokenizer that keeps non-Latin text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neft.config import TASK_KINDS, MetricOptions
from neft.distributed import ONE_PROCESS, Ranks, gather_in_order
from neft.tokenization import prompt_text

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def metric_names(kind: str, options: MetricOptions = MetricOptions()) -> tuple[str, ...]:
    """The scores a task kind reports: BLEU and chrF (and ROUGE if asked) for translation, ROUGE for summaries."""
    if kind == "translation":
        return ("bleu", "chrf", *(ROUGE_TYPES if options.rouge else ()))
    if kind == "summarization":
        return ROUGE_TYPES
    raise ValueError(f"unknown task kind {kind!r}; choose one of {list(TASK_KINDS)}")


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> list[str]:
    """Greedy completions of chat prompts, batched by similar length; returned in input order.
    Under torchrun each rank generates every world_size-th of the same batches and all ranks
    return every completion."""
    model.eval()
    device = next(model.parameters()).device
    texts = [prompt_text(tokenizer, prompt) for prompt in prompts]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # less padding per batch
    outputs: dict[int, str] = {}
    tokenizer.padding_side = "left"  # generation continues from the right edge
    starts = range(0, len(order), batch_size)[ranks.rank::ranks.world_size]
    for start in tqdm(starts, desc="generate", disable=None):
        indices = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            generated = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = generated[:, encoded["input_ids"].shape[1]:]
        for index, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            outputs[index] = text.strip()
    gathered = gather_in_order(outputs, ranks)
    return [gathered[index] for index in range(len(texts))]


def translation_metrics(predictions: Sequence[str], references: Sequence[str], bleu_tokenize: str = "13a") -> dict[str, float | str]:
    """Corpus BLEU and chrF with their sacreBLEU signatures (pick tokenize='zh' for Chinese targets)."""
    bleu, chrf = BLEU(tokenize=bleu_tokenize), CHRF()
    return {
        "bleu": bleu.corpus_score(list(predictions), [list(references)]).score,
        "chrf": chrf.corpus_score(list(predictions), [list(references)]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


class UnicodeWordTokenizer:
    """ROUGE tokenizer for any script: lower-cased word characters, each CJK character on its own.

    rouge-score's default keeps only [a-z0-9], which scores every Chinese summary 0."""

    _cjk = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    # A word stops at a CJK character (CJK characters are word characters too): "git命令" is 3 tokens.
    _token = re.compile(rf"[{_cjk}]|[^\W_{_cjk}]+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._token.findall(text.lower())


def summarization_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """Mean ROUGE F1 (x100) over examples."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeWordTokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    count = max(len(predictions), 1)
    scores = {name: 100 * total / count for name, total in totals.items()}
    return {**scores, "rouge_tokenizer": "unicode-words, CJK per character, no stemming"}


def task_metrics(kind: str, predictions: Sequence[str], references: Sequence[str],
                 options: MetricOptions = MetricOptions()) -> dict[str, float | str]:
    metric_names(kind, options)  # a known kind
    metrics: dict[str, float | str] = {}
    if kind == "translation":
        metrics.update(translation_metrics(predictions, references, options.bleu_tokenize))
    if kind == "summarization" or options.rouge:
        metrics.update(summarization_metrics(predictions, references))
    return metrics
