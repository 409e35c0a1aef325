import json

import pytest

from neft.config import TaskConfig, parse_section
from neft.data.records import DataError, Example, read_jsonl, subsample, write_jsonl
from neft.data.sources import build_splits, drop_test_overlap, pairs_from_parallel_sets, pairs_from_translation_column
from neft.tokenization import IGNORE_INDEX, encode_all, encode_counted, encode_for_training, training_batches


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")


def jsonl_task(tmp_path, **overrides) -> TaskConfig:
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        write_lines(files[split], [{"source": f"{split} uno {i}", "target": f"{split} one {i}"} for i in range(6)])
    task = {
        "name": "mine", "kind": "translation", "source": "jsonl", "files": {k: str(v) for k, v in files.items()},
        "source_field": "source", "target_field": "target", "instruction": "Translate.",
        "max_examples": {"train": 4, "valid": None, "test": None}, "max_length": 64, "max_new_tokens": 16,
    }
    task.update(overrides)
    return parse_section(TaskConfig, task, "task")


def test_jsonl_task_builds_prompts_and_subsamples_deterministically(tmp_path):
    task = jsonl_task(tmp_path)
    first, again = build_splits(task, seed=1), build_splits(task, seed=1)
    assert first == again
    assert len(first["train"]) == 4 and len(first["test"]) == 6
    assert first["test"][0].prompt == "Translate.\n\ntest uno 0" and first["test"][0].target == "test one 0"
    assert any(build_splits(task, seed=s)["train"] != first["train"] for s in range(2, 6))


def test_empty_file_is_rejected(tmp_path):
    task = jsonl_task(tmp_path)
    (tmp_path / "valid.jsonl").write_text("\n")
    with pytest.raises(DataError, match="valid.jsonl: no records"):
        build_splits(task, seed=0)


@pytest.mark.parametrize("line, message", [
    ("{oops", "not valid JSON"),
    (json.dumps({"source": "x"}), "needs non-empty string fields 'source', 'target'"),
    (json.dumps({"source": "x", "target": ""}), "needs non-empty"),
    ("[1, 2]", "expected a JSON object"),
])
def test_malformed_lines_are_rejected_with_their_line_number(tmp_path, line, message):
    task = jsonl_task(tmp_path)
    write_lines(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}, line])
    with pytest.raises(DataError, match=rf"train.jsonl:2: {message}"):
        build_splits(task, seed=0)


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        build_splits(jsonl_task(tmp_path, files={"train": "nope.jsonl", "valid": "nope.jsonl", "test": "nope.jsonl"}), seed=0)


def test_records_round_trip_and_malformed_records_fail(tmp_path):
    examples = [Example("1", "p ñ 你", "t"), Example("2", "q", "u")]
    write_jsonl(tmp_path / "x.jsonl", examples)
    assert read_jsonl(tmp_path / "x.jsonl") == examples
    write_lines(tmp_path / "bad.jsonl", [{"id": "1", "prompt": "p"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: needs non-empty string fields 'prompt', 'target'"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_test_prompts_never_remain_in_training():
    test = [Example("t", "same prompt", "x")]
    train = [Example("a", "same prompt", "y"), Example("b", "other", "z")]
    assert [e.id for e in drop_test_overlap(train, test)] == ["b"]


def test_subsample_keeps_order_and_is_seeded():
    items = list(range(100))
    sample = subsample(items, 10, seed=3)
    assert sample == sorted(sample) and len(set(sample)) == 10
    assert sample == subsample(items, 10, seed=3) != subsample(items, 10, seed=4)
    assert subsample(items, None, seed=0) == items


def test_hub_row_shapes_are_read():
    rows = [{"translation": {"en": "Hello", "zh": "你好"}}, {"translation": {"en": "", "zh": "空"}}]
    assert pairs_from_translation_column(rows, "translation", "en", "zh") == [("Hello", "你好")]
    source = [{"id": 1, "text": "Hello"}, {"id": 2, "text": "Bye"}]
    target = [{"id": 2, "text": "再见"}, {"id": 1, "text": "你好"}]
    assert pairs_from_parallel_sets(source, target, "text", "id") == [("1", "Hello", "你好"), ("2", "Bye", "再见")]


def test_training_labels_cover_the_answer_only(tokenizer):
    encoded = encode_for_training(tokenizer, Example("1", "Translate: hola", "hello"), max_length=512)
    answer = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer).startswith("hello<|im_end|>")
    assert encoded.labels[0] == IGNORE_INDEX


def test_examples_whose_prompt_fills_max_length_are_dropped(tokenizer):
    long = Example("1", "x" * 300, "y")
    assert encode_for_training(tokenizer, long, max_length=64) is None
    with pytest.raises(DataError, match="longer than max_length=64"):
        encode_all(tokenizer, [long], max_length=64)


def test_training_batches_are_seeded(tokenizer):
    items = encode_all(tokenizer, [Example(str(i), f"p{i}", f"t{i}") for i in range(10)], max_length=64)

    def first_batches(seed: int) -> list[list[int]]:  # 3 epochs of 2 batches: the reshuffles too
        batches = training_batches(items, 4, 0, seed=seed)
        return [next(batches)["input_ids"].tolist() for _ in range(6)]

    assert first_batches(5) == first_batches(5)
    assert first_batches(5) != first_batches(6)
    epochs = first_batches(5)
    assert epochs[:2] != epochs[2:4], "each epoch is reshuffled"


def test_prompts_for_analysis_are_truncated_not_dropped(tokenizer):
    from neft.tokenization import encode_prompts

    encoded = encode_prompts(tokenizer, ["x" * 300, "short"], max_length=64)
    assert [len(item.input_ids) for item in encoded][0] == 64
    assert len(encoded) == 2


def test_line_and_paragraph_separators_inside_strings_read_back(tmp_path):
    """JSON allows U+2028, U+2029 and U+0085 raw inside strings and write_jsonl writes them raw: only
    "\n" (or "\r\n") ends a record, so prepared data reads back as written."""
    examples = [Example("1", "line\u2028separator", "para\u2029graph"), Example("2", "next\x85line", "t")]
    write_jsonl(tmp_path / "x.jsonl", examples)
    assert "\u2028" in (tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert read_jsonl(tmp_path / "x.jsonl") == examples
    (tmp_path / "crlf.jsonl").write_bytes(b'{"id": "1", "prompt": "p", "target": "t"}\r\n\r\n{"id": "2", "prompt": "q", "target": "u"}\r\n')
    assert [example.id for example in read_jsonl(tmp_path / "crlf.jsonl")] == ["1", "2"]
    write_lines(tmp_path / "bad.jsonl", [{"id": "1", "prompt": "p", "target": "t"}])
    with (tmp_path / "bad.jsonl").open("a") as handle:
        handle.write('{"id": "2", "prompt": "half\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_examples_longer_than_max_length_are_counted_with_a_warning_and_all_of_them_are_an_error(tokenizer, capsys):
    short = [Example(str(i), "hi", "ok") for i in range(3)]
    long = [Example(f"long{i}", "a long prompt " * 20, "ok") for i in range(2)]
    kept, dropped = encode_counted(tokenizer, short + long, max_length=64, source="data/prepared/train.jsonl")
    assert (len(kept), dropped) == (3, 2)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("warning: data/prepared/train.jsonl: 2 of 5 examples"), warning
    assert "raise task.max_length" in warning
    assert encode_all(tokenizer, short, max_length=64) == kept and capsys.readouterr().err == "", "nothing dropped: no warning"
    with pytest.raises(DataError, match=r"every example's prompt is longer than max_length=64 .*raise task.max_length"):
        encode_all(tokenizer, long, max_length=64)
