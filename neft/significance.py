"""Is a difference between two systems on the same test set real? Paired bootstrap resampling.

Translation uses sacreBLEU's own paired bootstrap (`sacrebleu.significance.PairedTest`, Koehn 2004,
as Moses' bootstrap-hypothesis-difference-significance.pl): corpus BLEU and chrF are recomputed on
`samples` resamples of the test segments, drawn with sacreBLEU's fixed seed (SACREBLEU_SEED,
default 12345), so the same predictions always give the same p-value. ROUGE is a mean of
per-example F1 scores, so its bootstrap resamples those per-example differences with the same
seed, statistic and p-value as sacreBLEU's.

The p-value is two-sided (1.0 for identical predictions): the chance of a difference at least this large if the two systems were
equal. 95 % intervals are the bootstrap percentiles of each system's score.

Over several seeds (`seed_aware_test`), a difference has two sources of noise: the test segments,
and the training run itself (a seed redraws the probe, the mask, the initialisation and the batch
order; rerunning one seed on another CPU moved NeFT's BLEU by 0.37). Pooling every seed's segments
into one paired bootstrap counts only the first. The seed-aware test is an intersection-union test:
a difference counts only if both of these reject, so its p-value is the larger of the two:

- training variance (`p_seeds`): a two-sided paired t-test (`scipy.stats.ttest_1samp`) over the
  per-seed differences, each the corpus-level difference of that seed's two systems;
- test-segment variance (`p_segments`): a paired bootstrap in which one resample draws segment ids
  with replacement from all the seeds' ids and every seed takes its predictions for the ids drawn
  (a segment shared by seeds is one cluster), the statistic being the mean over seeds of each
  seed's resampled corpus difference; sacreBLEU's seed, draw and p-value statistic as above, and
  BLEU/chrF recomputed from sacreBLEU's own per-segment sufficient statistics. With one seed it is
  exactly the paired bootstrap above.

Each alone misses one variance: with 3 seeds the t-test has 2 degrees of freedom and takes the test
set as fixed where the seeds share it, and the bootstrap takes the trained models as fixed. Under
the null each test rejects at most alpha of the time, so requiring both does too. With one seed
there is no t-test (`p_seeds` is None) and the result is single-seed: test-segment variance only.
See docs/statistics.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import PairedTest
from scipy import stats

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


@dataclass(frozen=True)
class SeedAwareComparison:
    """One metric, system vs baseline over seeds, each seed's two systems on that seed's test segments.

    Scores and differences are means over seeds of each seed's corpus-level score. `p_value` is the
    larger of `p_seeds` and `p_segments`; with one seed `p_seeds` and the interval are None and
    `p_value` is `p_segments` (test-segment variance only).
    """

    metric: str
    baseline: float
    system: float
    difference: float  # mean over seeds of (system - baseline)
    ci95_low: float | None  # 95 % t interval of that mean
    ci95_high: float | None
    p_seeds: float | None  # training variance: paired t-test over the per-seed differences
    p_segments: float  # test-segment variance: paired bootstrap of segments, clustered over seeds
    p_value: float
    seeds: int
    segments: int  # all seeds' together
    samples: int

    @property
    def single_seed(self) -> bool:
        return self.p_seeds is None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


# A metric's per-segment statistics (segments x k) and what turns their sums (resamples x k) into corpus scores.
SegmentStatistics = tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def seed_aware_test(
    kind: str,
    pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    options: MetricOptions = MetricOptions(),
    samples: int = BOOTSTRAP_SAMPLES,
) -> list[SeedAwareComparison]:
    """Compare system with baseline over seeds, counting training and test-segment variance (module
    docstring). `pairs`: per seed, (baseline, system) prediction tables (id, reference, prediction)
    of the same segments in the same order; seeds may share segments or draw their own."""
    if not pairs:
        raise ValueError("seed-aware test needs at least one seed")
    for baseline, system in pairs:
        if list(system["id"]) != list(baseline["id"]) or system.empty:
            raise ValueError("a seed's two systems were evaluated on different test segments (ids differ, or their order), or on none")
        if not system["id"].is_unique:
            raise ValueError("a seed's test segments repeat an id: segments are resampled by id")
    per_seed = [(_segment_statistics(kind, list(system["reference"]), list(baseline["prediction"]), options),
                 _segment_statistics(kind, list(system["reference"]), list(system["prediction"]), options))
                for baseline, system in pairs]
    resample_counts = _clustered_resample_counts([list(system["id"]) for _, system in pairs], samples)
    identical = all(list(baseline["prediction"]) == list(system["prediction"]) for baseline, system in pairs)
    comparisons = []
    for metric in per_seed[0][0]:
        base_scores, system_scores, resampled_base, resampled_system = [], [], [], []
        for (base_statistics, system_statistics), counts in zip(per_seed, resample_counts, strict=True):
            for statistics, scores, resampled in ((base_statistics, base_scores, resampled_base),
                                                  (system_statistics, system_scores, resampled_system)):
                per_segment, corpus_score = statistics[metric]
                scores.append(float(corpus_score(per_segment.sum(0, keepdims=True))[0]))
                resampled.append(corpus_score(counts @ per_segment))
        differences = np.array(system_scores) - np.array(base_scores)
        p_segments = 1.0 if identical else _p_value(np.mean(resampled_base, axis=0), np.mean(resampled_system, axis=0),
                                                    abs(float(differences.mean())))
        p_seeds, ci95_low, ci95_high = seed_t_test(differences)
        comparisons.append(SeedAwareComparison(
            metric, float(np.mean(base_scores)), float(np.mean(system_scores)), float(differences.mean()), ci95_low, ci95_high,
            p_seeds, p_segments, p_segments if p_seeds is None else max(p_seeds, p_segments),
            len(pairs), sum(len(system) for _, system in pairs), samples))
    return comparisons


def _segment_statistics(kind: str, references: Sequence[str], predictions: Sequence[str],
                        options: MetricOptions) -> dict[str, SegmentStatistics]:
    """Per metric of the task kind (in `metric_names` order), per-segment statistics whose sums give the corpus score."""
    statistics: dict[str, SegmentStatistics] = {}
    if kind == "translation":
        for name, metric in (("bleu", BLEU(tokenize=options.bleu_tokenize)), ("chrf", CHRF())):
            # sacreBLEU's own sufficient statistics (what sacrebleu.significance resamples)
            per_segment = np.array(metric._extract_corpus_statistics(list(predictions), [list(references)]), dtype=float)
            statistics[name] = (per_segment, _sacrebleu_corpus_score(metric))
    if any(name in ROUGE_TYPES for name in metric_names(kind, options)):
        for name, scores in _rouge_per_example(references, predictions).items():
            # (score, 1) per example: the resampled sums give the resampled mean
            statistics[name] = (np.column_stack([scores, np.ones_like(scores)]), lambda sums: sums[:, 0] / sums[:, 1])
    return statistics


def _sacrebleu_corpus_score(metric: Metric) -> Callable[[np.ndarray], np.ndarray]:
    return lambda sums: np.array([metric._compute_score_from_stats(row).score for row in sums])


def _clustered_resample_counts(ids_per_seed: Sequence[Sequence[object]], samples: int) -> list[np.ndarray]:
    """Per seed, how often each of its segments is drawn in each resample (samples x its segments).

    A resample draws, with replacement, as many segment ids as all seeds hold distinct ones, from
    those ids; each seed takes its predictions for the ids drawn, so seeds sharing the test set are
    resampled together. With one seed the draw is sacreBLEU's own (`_bootstrap_resample`)."""
    union = pd.Index(list(dict.fromkeys(segment for ids in ids_per_seed for segment in ids)))  # first seen first
    draws = np.random.default_rng(_sacrebleu_seed()).choice(len(union), size=(samples, len(union)), replace=True)
    counts = np.zeros((samples, len(union)))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1)
    per_seed = [counts[:, union.get_indexer(ids)] for ids in ids_per_seed]
    if any((seed_counts.sum(1) == 0).any() for seed_counts in per_seed):  # its corpus score would be undefined
        raise ValueError("a resample drew none of one seed's segments: each seed needs more of the test segments")
    return per_seed


def seed_t_test(differences: Sequence[float] | np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Two-sided one-sample t-test of the per-seed differences against 0 (the seed-aware test's
    `p_seeds`), and the 95 % t interval of their mean; (None, None, None) for one seed, where
    training variance cannot be measured."""
    differences = np.asarray(differences, dtype=float)
    if len(differences) < 2:
        return None, None, None
    mean = float(differences.mean())
    if np.ptp(differences) == 0:  # no spread: t is 0/0 or infinite, which scipy turns into NaN
        return (1.0 if mean == 0 else 0.0), mean, mean
    test = stats.ttest_1samp(differences, 0.0)
    interval = test.confidence_interval(0.95)
    return float(test.pvalue), float(interval.low), float(interval.high)


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


def _rouge_per_example(references: Sequence[str], predictions: Sequence[str]) -> dict[str, np.ndarray]:
    """Each ROUGE type's F1 (x 100) of every example; the corpus score is their mean."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeWordTokenizer())
    scores = [scorer.score(reference, prediction) for reference, prediction in zip(references, predictions, strict=True)]
    return {name: 100 * np.array([score[name].fmeasure for score in scores]) for name in ROUGE_TYPES}


def _rouge(references: Sequence[str], baseline: Sequence[str], system: Sequence[str], samples: int) -> list[PairedComparison]:
    base_scores, system_scores = _rouge_per_example(references, baseline), _rouge_per_example(references, system)
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
