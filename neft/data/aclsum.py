"""ACLSum aspect-based summarisation data, read offline from the PyPI package `aclsum`.

ACLSum (Takeshita et al., NAACL 2024; MIT) has 100 train / 50 valid / 100 test ACL Anthology
papers, each with a one-sentence abstractive summary of its challenge, approach and outcome. The
package ships the whole corpus as JSONL inside site-packages (`aclsum/dataset/{train,val,test}.jsonl`)
and reads it with `aclsum.ACLSum(split)`; nothing is downloaded, so this works offline.

Each (paper, aspect) pair becomes one Example: the prompt holds the paper's abstract, the target
that aspect's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neft.data.records import DataError, Example, subsample

INSTALL_COMMAND = "pip install aclsum"
SPLITS = ("train", "valid", "test")
ASPECTS = ("challenge", "approach", "outcome")
# The package calls the validation split "val"; accept the other usual spellings too.
_PACKAGE_SPLIT = {"train": "train", "valid": "val", "val": "val", "validation": "val", "dev": "val", "test": "test"}
# The package segments each paper into these sections; only the abstract is used as the document,
# because the full text (~5,900 characters, ~1,500 tokens, on average) does not fit a short context.
DOCUMENT_SECTIONS = ("abstract",)


@dataclass(frozen=True)
class Paper:
    """One ACLSum paper: ACL Anthology id, title, document text and aspect -> summary."""

    id: str
    title: str
    document: str
    summaries: dict[str, str]


def _join(text: str | Sequence[str] | None) -> str:
    """A string, or sentences joined by single spaces, stripped ("" for None)."""
    if text is None:
        return ""
    if isinstance(text, str):
        return text.strip()
    return " ".join(sentence.strip() for sentence in text if sentence and sentence.strip())


def package_split(split: str) -> str:
    """The package's name for one of our split names (train/valid/test)."""
    try:
        return _PACKAGE_SPLIT[split]
    except KeyError:
        raise DataError(f"unknown ACLSum split {split!r}; expected one of {list(SPLITS)}") from None


def paper_from_document(document: Any, sections: Sequence[str] = DOCUMENT_SECTIONS) -> Paper:
    """Turn an `aclsum` Document (id, title, summaries, sentences by section) into a Paper."""
    sentences = document.sentences or {}
    text = " ".join(part for part in (_join(sentences.get(section)) for section in sections) if part)
    summaries = {aspect: _join(summary) for aspect, summary in (document.summaries or {}).items()}
    return Paper(id=str(document.id), title=_join(document.title), document=text, summaries=summaries)


def load_aclsum_papers(split: str, sections: Sequence[str] = DOCUMENT_SECTIONS) -> list[Paper]:
    """The papers of one split (train/valid/test) from the installed `aclsum` package, in its order."""
    name = package_split(split)
    try:
        from aclsum import ACLSum
    except ImportError as error:
        # Also raised when its dependency `sienna` is missing; the same command installs both.
        raise DataError(f"the ACLSum data needs the `aclsum` package ({error}); install it with: {INSTALL_COMMAND}") from None
    try:
        corpus = ACLSum(name)
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"could not read ACLSum split {name!r} from the installed package ({error}); reinstall it with: {INSTALL_COMMAND}"
        ) from None
    papers = [paper_from_document(document, sections) for document in corpus]
    if not papers:
        raise DataError(f"ACLSum split {name!r} is empty; reinstall it with: {INSTALL_COMMAND}")
    return papers


def check_aspects(aspects: Sequence[str]) -> list[str]:
    """The aspects as a list, failing on an empty list or one the dataset does not annotate."""
    unknown = [aspect for aspect in aspects if aspect not in ASPECTS]
    if unknown:
        raise DataError(f"unknown ACLSum aspect(s) {unknown}; valid aspects are {list(ASPECTS)}")
    if not aspects:
        raise DataError(f"no ACLSum aspects given; valid aspects are {list(ASPECTS)}")
    return list(aspects)


def paper_examples(papers: Sequence[Paper], instruction: str, aspects: Sequence[str]) -> list[Example]:
    """One Example per (paper, aspect), paper-major; pairs with an empty document or summary are skipped."""
    examples = []
    for paper in papers:
        if not paper.document:
            continue
        for aspect in aspects:
            summary = paper.summaries.get(aspect, "")
            if not summary:
                continue
            try:
                prompt = instruction.format(aspect=aspect, document=paper.document)
            except (KeyError, IndexError, ValueError) as error:
                raise DataError(f"instruction must use only the fields {{aspect}} and {{document}} ({error!r}): {instruction!r}") from None
            examples.append(Example(id=f"{paper.id}/{aspect}", prompt=prompt, target=summary))
    return examples


def build_aclsum_splits(
    instruction: str, aspects: list[str], max_examples: dict[str, int | None], seed: int
) -> dict[str, list[Example]]:
    """train/valid/test Examples (id "<paper id>/<aspect>"), each split subsampled to max_examples[split]."""
    aspects = check_aspects(aspects)
    splits = {}
    for split in SPLITS:
        examples = paper_examples(load_aclsum_papers(split), instruction, aspects)
        if not examples:
            raise DataError(f"ACLSum split {split!r} has no (paper, aspect) pair with both a document and a summary")
        splits[split] = subsample(examples, max_examples.get(split), seed)
    return splits
