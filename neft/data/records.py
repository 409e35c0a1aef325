"""The one record format every task is turned into, and its JSONL I/O.

A record is an instruction-following pair: `prompt` is the user message (instruction and
input already joined by the task's template), `target` the reference answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neft.errors import UserError


class DataError(UserError):
    """Task data is missing, empty or malformed."""


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    target: str


def translation_example(example_id: str, instruction: str, source: str, target: str) -> Example:
    return Example(id=example_id, prompt=f"{instruction}\n\n{source.strip()}", target=target.strip())


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a clear error naming file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    found = False
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line_number = path.read_bytes()[:error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line_number}: not UTF-8 (byte {error.object[error.start]:#04x}); save the file as UTF-8") from None
    # "\n" alone ends a line (and "\r\n": json.loads ignores the "\r"): str.splitlines() would also break
    # at U+2028, U+2029 and U+0085, which JSON allows raw inside strings and write_jsonl writes raw.
    for line_number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_number}: expected a JSON object")
        found = True
        yield line_number, row
    if not found:
        raise DataError(f"{path}: no records")


def require_text_fields(path: Path, line_number: int, row: dict[str, Any], fields: Sequence[str]) -> None:
    if not all(isinstance(row.get(field), str) and row[field].strip() for field in fields):
        raise DataError(f"{path}:{line_number}: needs non-empty string fields {', '.join(map(repr, fields))}")


def read_jsonl(path: Path) -> list[Example]:
    """Read prepared records, failing with the file and line number on anything malformed."""
    examples = []
    for line_number, row in json_lines(path):
        if "id" not in row:
            raise DataError(f"{path}:{line_number}: missing field 'id'")
        require_text_fields(path, line_number, row, ("prompt", "target"))
        examples.append(Example(id=str(row["id"]), prompt=row["prompt"], target=row["target"]))
    return examples


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")


def subsample(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` items chosen by `random.Random(seed)`, kept in their original order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise DataError(f"max_examples must be a non-negative integer or null, got {limit}")
    # Sorted indices keep canonical order (e.g. all aspects of a paper stay together).
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]
