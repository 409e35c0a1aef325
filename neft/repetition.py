"""Whether generated text repeats itself: the failure of an under-trained model (or a base model
that continues its prompt), which BLEU alone hides. A prediction repeats when some span of `span`
non-space characters occurs `times` or more times in it; counting characters, not words, makes the
test work for Chinese as for English.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

SPAN = 6
TIMES = 3


def repeats(text: str, span: int = SPAN, times: int = TIMES) -> bool:
    """True if some `span`-character stretch of `text` (whitespace removed) occurs `times`+ times."""
    if span < 1 or times < 2:
        raise ValueError(f"span must be >= 1 and times >= 2, got span={span}, times={times}")
    characters = "".join(text.split())
    counts = Counter(characters[start:start + span] for start in range(len(characters) - span + 1))
    return any(count >= times for count in counts.values())


def repetition_rate(texts: Iterable[str], span: int = SPAN, times: int = TIMES) -> float:
    """The fraction of `texts` that repeat themselves (see `repeats`)."""
    flags = [repeats(text, span, times) for text in texts]
    if not flags:
        raise ValueError("no texts to check")
    return sum(flags) / len(flags)
