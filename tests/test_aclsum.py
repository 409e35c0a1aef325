"""ACLSum data source: split sizes, ids, prompts, seeded subsampling and error messages."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from neft.data.aclsum import (
    ASPECTS,
    Paper,
    build_aclsum_splits,
    load_aclsum_papers,
    paper_examples,
    paper_from_document,
)
from neft.data.records import DataError

INSTRUCTION = "Summarize the {aspect} of this paper in one sentence.\n\n{document}"
ALL = {"train": None, "valid": None, "test": None}
PAPERS = {"train": 100, "valid": 50, "test": 100}


@pytest.fixture(scope="module")
def papers() -> dict[str, list[Paper]]:
    return {split: load_aclsum_papers(split) for split in PAPERS}


@pytest.fixture(scope="module")
def full() -> dict:
    return build_aclsum_splits(INSTRUCTION, list(ASPECTS), dict(ALL), seed=0)


def test_paper_counts_and_fields(papers):
    assert {split: len(items) for split, items in papers.items()} == PAPERS
    for items in papers.values():
        assert len({paper.id for paper in items}) == len(items)
        for paper in items:
            assert paper.document and set(paper.summaries) == set(ASPECTS)
            assert all(isinstance(summary, str) and summary for summary in paper.summaries.values())


def test_splits_hold_disjoint_papers(papers):
    train, valid, test = ({paper.id for paper in papers[split]} for split in ("train", "valid", "test"))
    assert not (train & valid or train & test or valid & test)


def test_split_name_aliases_read_the_validation_split(papers):
    for alias in ("validation", "dev", "val"):
        assert [paper.id for paper in load_aclsum_papers(alias)] == [paper.id for paper in papers["valid"]]
    with pytest.raises(DataError, match="unknown ACLSum split"):
        load_aclsum_papers("holdout")


def test_full_splits_have_three_examples_per_paper(full):
    assert set(full) == {"train", "valid", "test"}
    assert {split: len(examples) for split, examples in full.items()} == {split: 3 * n for split, n in PAPERS.items()}


def test_ids_unique_and_name_paper_and_aspect(full, papers):
    ids = [example.id for examples in full.values() for example in examples]
    assert len(ids) == len(set(ids))
    expected = [f"{paper.id}/{aspect}" for paper in papers["train"] for aspect in ASPECTS]
    assert [example.id for example in full["train"]] == expected


def test_prompts_contain_aspect_and_document_and_targets_are_summaries(full, papers):
    for split, examples in full.items():
        by_id = {paper.id: paper for paper in papers[split]}
        for example in examples:
            paper_id, aspect = example.id.rsplit("/", 1)
            paper = by_id[paper_id]
            assert example.prompt == INSTRUCTION.format(aspect=aspect, document=paper.document)
            assert aspect in example.prompt and paper.document in example.prompt
            assert example.target == paper.summaries[aspect]
            assert example.target.strip() and "\n" not in example.target


def test_aspect_subset_only_yields_those_aspects():
    splits = build_aclsum_splits(INSTRUCTION, ["outcome"], dict(ALL), seed=0)
    assert {split: len(examples) for split, examples in splits.items()} == PAPERS
    assert all(example.id.endswith("/outcome") for examples in splits.values() for example in examples)


def test_subsampling_is_seeded_sized_and_keeps_canonical_order(full):
    limits = {"train": 10, "valid": 5, "test": None}
    first = build_aclsum_splits(INSTRUCTION, list(ASPECTS), limits, seed=1)
    again = build_aclsum_splits(INSTRUCTION, list(ASPECTS), limits, seed=1)
    other = build_aclsum_splits(INSTRUCTION, list(ASPECTS), limits, seed=2)
    assert first == again
    assert first["train"] != other["train"]
    assert (len(first["train"]), len(first["valid"]), len(first["test"])) == (10, 5, 300)
    assert first["test"] == full["test"]
    for split in ("train", "valid"):
        positions = [full[split].index(example) for example in first[split]]
        assert positions == sorted(positions)


def test_missing_limit_and_oversized_limit_keep_everything(full):
    splits = build_aclsum_splits(INSTRUCTION, list(ASPECTS), {"valid": 10_000}, seed=3)
    assert splits == full


def test_unknown_aspect_lists_the_valid_ones():
    with pytest.raises(DataError) as error:
        build_aclsum_splits(INSTRUCTION, ["challenge", "method"], dict(ALL), seed=0)
    message = str(error.value)
    assert "method" in message and all(aspect in message for aspect in ASPECTS)
    with pytest.raises(DataError, match="no ACLSum aspects"):
        build_aclsum_splits(INSTRUCTION, [], dict(ALL), seed=0)


def test_empty_documents_and_summaries_are_skipped():
    papers = [
        Paper(id="a", title="", document="Some abstract.", summaries={"challenge": "C.", "approach": "", "outcome": "O."}),
        Paper(id="b", title="", document="", summaries={"challenge": "C.", "approach": "A.", "outcome": "O."}),
    ]
    examples = paper_examples(papers, INSTRUCTION, list(ASPECTS))
    assert [example.id for example in examples] == ["a/challenge", "a/outcome"]


def test_sentence_lists_are_joined_with_spaces():
    document = SimpleNamespace(
        id="x",
        title="T",
        summaries={"challenge": ["First.", "Second."], "approach": "A.", "outcome": None},
        sentences={"abstract": ["One .", "Two ."], "introduction": ["Not used ."]},
    )
    paper = paper_from_document(document)
    assert paper.document == "One . Two ."
    assert paper.summaries == {"challenge": "First. Second.", "approach": "A.", "outcome": ""}


def test_bad_instruction_field_is_a_data_error():
    with pytest.raises(DataError, match="aspect"):
        build_aclsum_splits("Summarize {paper}", ["challenge"], dict(ALL), seed=0)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "aclsum", None)  # makes `import aclsum` raise ImportError
    with pytest.raises(DataError, match="pip install aclsum"):
        load_aclsum_papers("train")
