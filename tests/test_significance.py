"""Paired bootstrap: a clear improvement is significant, noise is not, and the test is reproducible."""

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from neft.significance import paired_bootstrap

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
