"""Is a difference between two systems on the same test set real? Paired bootstrap resampling.

Translation uses sacreBLEU's own paired bootstrap (`sacrebleu.significance.PairedTest`, Koehn 2004,
as Moses' bootstrap-hypothesis-difference-significance.pl): corpus BLEU and chrF are recomputed on
`samples` resamples of the test segments, drawn with sacreBLEU's fixed seed (SACREBLEU_SEED,
default 12345), so the same predictions always give the same p-value. ROUGE is a mean of
per-example F1 scores, so its bootstrap resamples those per-example differences with the same
seed, statistic and p-value as sacreBLEU's.

The p-value is two-sided (1.0 for identical predictions): the chance of a difference at least this large if the two systems were
equal. 95 % intervals are the bootstrap percentiles of each system's score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from neft.config import MetricOptions
from neft.evaluation import ROUGE_TYPES, UnicodeWordTokenizer, metric_names

BOOTSTRAP_SAMPLES = 1000


@dataclass(frozen=True)
class PairedComparison:
    """One metric, system vs baseline on the same segments."""

    metric: str
    baseline: float
    system: float
    difference: float  # system - baseline
    p_value: float
    baseline_ci95: float  # half-width of the bootstrap 95 % interval
    system_ci95: float
    segments: int
    samples: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_bootstrap(
    kind: str,
    references: Sequence[str],
    baseline: Sequence[str],
    system: Sequence[str],
    options: MetricOptions = MetricOptions(),
    samples: int = BOOTSTRAP_SAMPLES,
) -> list[PairedComparison]:
    """Compare `system` with `baseline` on every metric of the task kind (`metric_names`)."""
    if not len(references) == len(baseline) == len(system) > 0:
        raise ValueError(f"paired test needs equally many segments, got {len(references)}, {len(baseline)}, {len(system)}")
    names = metric_names(kind, options)
    comparisons = []
    if kind == "translation":
        comparisons += _translation(references, baseline, system, options.bleu_tokenize, samples)
    if any(name in ROUGE_TYPES for name in names):
        comparisons += _rouge(references, baseline, system, samples)
    if list(baseline) == list(system):
        # sacreBLEU's statistic gives the smallest p-value to a system compared with itself; no
        # difference at all is no evidence of one.
        comparisons = [replace(comparison, p_value=1.0) for comparison in comparisons]
    return comparisons


def compare_predictions(kind: str, baseline: pd.DataFrame, system: pd.DataFrame, options: MetricOptions = MetricOptions(),
                        samples: int = BOOTSTRAP_SAMPLES) -> list[PairedComparison]:
    """`paired_bootstrap` of two saved prediction tables (id, reference, prediction) of the same segments."""
    if list(system["id"]) != list(baseline["id"]):
        raise ValueError("the two systems were evaluated on different test segments (ids differ, or their order)")
    return paired_bootstrap(kind, list(system["reference"]), list(baseline["prediction"]), list(system["prediction"]),
                            options, samples)


def _translation(references: Sequence[str], baseline: Sequence[str], system: Sequence[str], bleu_tokenize: str,
                 samples: int) -> list[PairedComparison]:
    test = PairedTest([("baseline", list(baseline)), ("system", list(system))],
                      metrics={"bleu": BLEU(tokenize=bleu_tokenize), "chrf": CHRF()},
                      references=[list(references)], test_type="bs", n_samples=samples)
    _, results = test()
    comparisons = []
    metric_columns = [column for name, column in results.items() if name != "System"]  # in the order given
    for metric, (base, other) in zip(("bleu", "chrf"), metric_columns, strict=True):
        comparisons.append(PairedComparison(metric, base.score, other.score, other.score - base.score, float(other.p_value),
                                            float(base.ci), float(other.ci), len(references), samples))
    return comparisons


def _rouge(references: Sequence[str], baseline: Sequence[str], system: Sequence[str], samples: int) -> list[PairedComparison]:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeWordTokenizer())

    def per_example(predictions: Sequence[str]) -> dict[str, np.ndarray]:
        scores = [scorer.score(reference, prediction) for reference, prediction in zip(references, predictions, strict=True)]
        return {name: 100 * np.array([score[name].fmeasure for score in scores]) for name in ROUGE_TYPES}

    base_scores, system_scores = per_example(baseline), per_example(system)
    indices = np.random.default_rng(_sacrebleu_seed()).choice(len(references), size=(samples, len(references)), replace=True)
    comparisons = []
    for name in ROUGE_TYPES:
        resampled_base, resampled_system = base_scores[name][indices].mean(1), system_scores[name][indices].mean(1)
        base, other = float(base_scores[name].mean()), float(system_scores[name].mean())
        comparisons.append(PairedComparison(name, base, other, other - base,
                                            _p_value(resampled_base, resampled_system, abs(other - base)),
                                            _ci95(resampled_base), _ci95(resampled_system), len(references), samples))
    return comparisons


def _sacrebleu_seed() -> int | None:
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    return None if seed.lower() == "none" else int(seed)


def _p_value(resampled_base: np.ndarray, resampled_system: np.ndarray, observed: float) -> float:
    """sacreBLEU's statistic: resampled absolute differences, centred (the null), above the observed one."""
    differences = np.abs(resampled_system - resampled_base)
    return float((np.sum(differences - differences.mean() > observed) + 1) / (len(differences) + 1))


def _ci95(resampled: np.ndarray) -> float:
    """Half-width of the 95 % percentile interval, as sacreBLEU's `estimate_ci`."""
    ordered = np.sort(resampled)
    cut = len(ordered) // 40
    return float(0.5 * (ordered[len(ordered) - cut - 1] - ordered[cut]))
