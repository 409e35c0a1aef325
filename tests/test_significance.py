"""Paired bootstrap: a clear improvement is significant, noise is not, and the test is reproducible;
over seeds, a difference must also survive the variance between training runs."""

import numpy as np
import pandas as pd
import pytest
from sacrebleu.metrics import BLEU

from neft.config import MetricOptions
from neft.evaluation import ROUGE_TYPES
from neft.significance import compare_predictions, paired_bootstrap, seed_aware_test

WORDS = "the a cat dog sat ran on in park mat home early rain went we it is".split()


def corpus(size: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=8)) for _ in range(size)]


def corrupt(sentences: list[str], share: float, seed: int) -> list[str]:
    """Replace `share` of each sentence's words with random ones."""
    rng = np.random.default_rng(seed)
    return [" ".join(word if rng.random() > share else str(rng.choice(WORDS)) for word in sentence.split()) for sentence in sentences]


@pytest.mark.parametrize("kind", ["translation", "summarization"])
def test_clear_improvement_is_significant_and_equal_noise_is_not(kind):
    references = corpus(80, seed=0)
    poor, good = corrupt(references, 0.7, seed=1), corrupt(references, 0.2, seed=2)
    better = paired_bootstrap(kind, references, poor, good)
    assert [c.metric for c in better] == (["bleu", "chrf"] if kind == "translation" else ["rouge1", "rouge2", "rougeL", "rougeLsum"])
    assert all(c.difference > 0 and c.p_value < 0.01 for c in better)
    assert all(c.segments == 80 and c.samples == 1000 and c.system_ci95 > 0 for c in better)
    assert paired_bootstrap(kind, references, poor, good) == better, "the resampling seed is fixed"


@pytest.mark.parametrize("kind", ["translation", "summarization"])
def test_systems_of_equal_quality_are_rarely_significant(kind):
    # Two systems that are random segment-wise swaps of the same two outputs: the null holds, so
    # p < 0.05 should come up about 5 % of the time (allow 4 of 20).
    references = corpus(60, seed=6)
    first, second = corrupt(references, 0.5, seed=7), corrupt(references, 0.5, seed=8)
    rng = np.random.default_rng(9)
    significant = 0
    for _ in range(20):
        swap = rng.random(len(references)) < 0.5
        one = [b if s else a for a, b, s in zip(first, second, swap, strict=True)]
        other = [a if s else b for a, b, s in zip(first, second, swap, strict=True)]
        significant += paired_bootstrap(kind, references, one, other, samples=300)[0].p_value < 0.05
    assert significant <= 4


def test_scores_are_the_plain_corpus_scores_and_identical_systems_get_p_one():
    references = corpus(40, seed=4)
    system = corrupt(references, 0.4, seed=5)
    bleu = paired_bootstrap("translation", references, system, system)[0]
    assert bleu.baseline == bleu.system == pytest.approx(BLEU().corpus_score(system, [references]).score)
    assert bleu.difference == 0 and bleu.p_value == 1.0


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="equally many segments"):
        paired_bootstrap("translation", ["a", "b"], ["a"], ["a", "b"])


def seed_pairs(references: list[list[str]], shares: list[tuple[float, float]], seed: int,
               shared_test_set: bool = True) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Per seed, (baseline, system) prediction tables: the references with (baseline share, system
    share) of their words replaced, each seed's corruption drawn anew (its own training run)."""
    pairs = []
    for number, (sentences, (baseline_share, system_share)) in enumerate(zip(references, shares, strict=True)):
        ids = [f"{'' if shared_test_set else f's{number}-'}{i}" for i in range(len(sentences))]
        tables = [pd.DataFrame({"id": ids, "reference": sentences,
                                "prediction": corrupt(sentences, share, seed=seed * 1000 + 2 * number + side)})
                  for side, share in enumerate((baseline_share, system_share))]
        pairs.append((tables[0], tables[1]))
    return pairs


def test_seed_aware_test_rarely_calls_equal_systems_different():
    # 200 draws of 5 seeds sharing 20 test segments, both systems corrupted alike in every seed:
    # the null holds, so p < 0.05 should come up at most about 5 % of the time.
    called_different = 0
    for draw in range(200):
        references = corpus(20, seed=10_000 + draw)
        pairs = seed_pairs([references] * 5, [(0.5, 0.5)] * 5, seed=draw)
        called_different += seed_aware_test("summarization", pairs, samples=300)[0].p_value < 0.05
    assert called_different <= 16


@pytest.mark.parametrize("kind", ["translation", "summarization"])
def test_seed_aware_test_detects_a_shift_in_every_seed(kind):
    # 5 seeds, each on its own test sample; the system is better in each seed and on most segments.
    references = [corpus(30, seed=20 + number) for number in range(5)]
    comparisons = seed_aware_test(kind, seed_pairs(references, [(0.6, 0.2)] * 5, seed=3, shared_test_set=False))
    for comparison in comparisons:
        assert comparison.difference > 0 and comparison.ci95_low > 0, comparison
        assert comparison.p_seeds < 0.05 and comparison.p_segments < 0.05 and comparison.p_value < 0.05, comparison
        assert (comparison.seeds, comparison.segments) == (5, 150) and not comparison.single_seed


def test_a_difference_that_flips_between_seeds_is_not_significant():
    # Within each seed the difference is clear on the shared segments, but its sign depends on the
    # seed: the segment bootstrap alone calls the mean significant; the training variance says no.
    references = corpus(40, seed=30)
    shares = [(0.7, 0.1), (0.7, 0.1), (0.7, 0.1), (0.1, 0.6), (0.1, 0.6)]
    comparisons = seed_aware_test("summarization", seed_pairs([references] * 5, shares, seed=4))
    for comparison in comparisons:
        assert comparison.p_segments < 0.05, comparison
        assert comparison.p_seeds >= 0.05 and comparison.p_value >= 0.05, comparison
        assert comparison.ci95_low < 0 < comparison.ci95_high


def test_one_seed_is_single_seed_and_is_the_paired_bootstrap():
    references = corpus(50, seed=40)
    [(baseline, system)] = seed_pairs([references], [(0.6, 0.3)], seed=5)
    options = MetricOptions(rouge=True)
    comparisons = seed_aware_test("translation", [(baseline, system)], options)
    expected = compare_predictions("translation", baseline, system, options)
    assert [c.metric for c in comparisons] == [c.metric for c in expected] == ["bleu", "chrf", *ROUGE_TYPES]
    for comparison, paired in zip(comparisons, expected, strict=True):
        assert comparison.single_seed and comparison.p_seeds is None and comparison.ci95_low is None
        assert comparison.p_value == comparison.p_segments == paired.p_value
        assert comparison.difference == pytest.approx(paired.difference)


def test_seed_aware_test_of_identical_systems_and_of_mismatched_segments():
    references = corpus(20, seed=50)
    pairs = [(baseline, baseline.copy()) for baseline, _ in seed_pairs([references] * 3, [(0.5, 0.5)] * 3, seed=6)]
    assert all(c.difference == 0 and c.p_value == 1.0 for c in seed_aware_test("summarization", pairs))
    baseline, system = pairs[0]
    with pytest.raises(ValueError, match="different test segments"):
        seed_aware_test("summarization", [(baseline, system.iloc[::-1])])
