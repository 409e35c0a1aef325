"""One entry point per task source; each returns {train, valid, test} lists of `Example`.

Sources: `sword` (the offline Bible default), `aclsum` (offline summarisation), `gettext` (offline
software messages, English -> Chinese), `jsonl` (your own files), `hub_translation` (a hub parallel
corpus for training and a hub test set, for GPU users).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from neft.config import TASK_SOURCES, TaskConfig
from neft.data.records import DataError, Example, json_lines, require_text_fields, subsample, translation_example

SPLITS = ("train", "valid", "test")


def _read_user_jsonl(path: Path, source_field: str, target_field: str, instruction: str) -> list[Example]:
    """Read a user's JSONL (one object per line with the configured source/target fields)."""
    examples = []
    for line_number, row in json_lines(path):
        require_text_fields(path, line_number, row, (source_field, target_field))
        example_id = str(row.get("id", f"{Path(path).stem}-{line_number}"))
        examples.append(translation_example(example_id, instruction, row[source_field], row[target_field]))
    return examples


def jsonl_splits(task: TaskConfig, seed: int) -> dict[str, list[Example]]:
    return {
        split: subsample(
            _read_user_jsonl(Path(task.files[split]), task.source_field, task.target_field, task.instruction),
            getattr(task.max_examples, split),
            seed,
        )
        for split in SPLITS
    }


def pairs_from_translation_column(
    rows: Sequence[Mapping[str, Any]], column: str, source_lang: str, target_lang: str
) -> list[tuple[str, str]]:
    """(source, target) from rows shaped like {column: {lang: text}} (OPUS / WMT datasets)."""
    pairs = []
    for row in rows:
        pair = row[column]
        if pair.get(source_lang, "").strip() and pair.get(target_lang, "").strip():
            pairs.append((pair[source_lang], pair[target_lang]))
    return pairs


def pairs_from_parallel_sets(
    source_rows: Sequence[Mapping[str, Any]], target_rows: Sequence[Mapping[str, Any]], text_field: str, id_field: str
) -> list[tuple[str, str, str]]:
    """(id, source, target) joined by id from two monolingual sets (FLORES-style)."""
    targets = {str(row[id_field]): row[text_field] for row in target_rows}
    return [(str(row[id_field]), row[text_field], targets[str(row[id_field])]) for row in source_rows if str(row[id_field]) in targets]


def hub_translation_splits(task: TaskConfig, seed: int) -> dict[str, list[Example]]:
    """Train/valid from a hub parallel corpus, test from a hub benchmark (needs hub access)."""
    from datasets import load_dataset

    train_cfg, test_cfg = task.train_set, task.test_set
    corpus = load_dataset(train_cfg["path"], train_cfg.get("name"), split=train_cfg["split"])
    pairs = pairs_from_translation_column(corpus, train_cfg["column"], task.source_lang, task.target_lang)
    pairs = [pairs[i] for i in random.Random(seed).sample(range(len(pairs)), len(pairs))]
    valid_size = task.max_examples.valid or 0
    train_size = task.max_examples.train or len(pairs) - valid_size
    valid_pairs, train_pairs = pairs[:valid_size], pairs[valid_size:valid_size + train_size]
    source_set = load_dataset(test_cfg["path"], test_cfg["source_name"], split=test_cfg["split"])
    target_set = load_dataset(test_cfg["path"], test_cfg["target_name"], split=test_cfg["split"])
    test_triples = pairs_from_parallel_sets(source_set, target_set, test_cfg["text_field"], test_cfg["id_field"])
    instruction = task.instruction
    return {
        "train": [translation_example(f"train-{i}", instruction, s, t) for i, (s, t) in enumerate(train_pairs)],
        "valid": [translation_example(f"valid-{i}", instruction, s, t) for i, (s, t) in enumerate(valid_pairs)],
        "test": subsample([translation_example(i, instruction, s, t) for i, s, t in test_triples], task.max_examples.test, seed),
    }


def sword_splits(task: TaskConfig, seed: int) -> dict[str, list[Example]]:
    from neft.data.bible import build_bible_splits

    return build_bible_splits(
        source_module=task.source_module,
        target_module=task.target_module,
        instruction=task.instruction,
        valid_books=list(task.valid_books),
        test_books=list(task.test_books),
        max_examples={split: getattr(task.max_examples, split) for split in SPLITS},
        seed=seed,
    )


def aclsum_splits(task: TaskConfig, seed: int) -> dict[str, list[Example]]:
    from neft.data.aclsum import build_aclsum_splits

    return build_aclsum_splits(
        instruction=task.instruction,
        aspects=list(task.aspects),
        max_examples={split: getattr(task.max_examples, split) for split in SPLITS},
        seed=seed,
    )


def gettext_splits(task: TaskConfig, seed: int) -> dict[str, list[Example]]:
    from neft.data.gettext import build_gettext_splits

    return build_gettext_splits(
        packages=task.packages,
        locale_dir=Path(task.locale_dir),
        language=task.language,
        valid_packages=task.valid_packages,
        test_packages=task.test_packages,
        min_words=task.min_words,
        instruction=task.instruction,
        max_examples={split: getattr(task.max_examples, split) for split in SPLITS},
        seed=seed,
    )


def source_manifest(task: TaskConfig) -> dict[str, Any]:
    """What the task's data was read from, where the files can change under the pipeline (system
    packages): recorded in data/prepared/summary.json so that a changed source changes an output."""
    if task.source == "gettext":
        from neft.data.gettext import catalog_manifest

        return {"packages": catalog_manifest(task.packages, Path(task.locale_dir), task.language)}
    return {}


BUILDERS: dict[str, Callable[[TaskConfig, int], dict[str, list[Example]]]] = {
    "sword": sword_splits,
    "aclsum": aclsum_splits,
    "jsonl": jsonl_splits,
    "hub_translation": hub_translation_splits,
    "gettext": gettext_splits,
}


def drop_test_overlap(examples: Sequence[Example], test: Sequence[Example]) -> list[Example]:
    """Remove examples whose prompt is also a test prompt (the Bible repeats some verses word for word)."""
    test_prompts = {example.prompt for example in test}
    return [example for example in examples if example.prompt not in test_prompts]


assert set(BUILDERS) == set(TASK_SOURCES), "neft.config.TASK_SOURCES names every builder"


def build_splits(task: TaskConfig, seed: int) -> dict[str, list[Example]]:
    """Every split of the configured task, checked: no empty split, no test prompt in train or valid."""
    splits = BUILDERS[task.source](task, seed)
    splits["train"] = drop_test_overlap(splits["train"], splits["test"])
    splits["valid"] = drop_test_overlap(splits["valid"], splits["test"])
    for split in SPLITS:
        if not splits.get(split):
            raise DataError(f"task {task.name!r}: the {split} split is empty")
    return splits
