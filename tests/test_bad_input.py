"""README's table of what users get wrong: one case per row. Each runs the stage's command line
in-process in a copy of the tiny project and checks that the stage exits 2 with one line that names
the field and the fix, before any heavy work, and leaves every file as it was."""

from __future__ import annotations

import errno
import json
import re
import runpy
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import TINY, inside, run_name_of

from neft.config import compose_params

# runpy runs an already imported stage module again as __main__, as `python -m` would; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:'stages.*' found in sys.modules:RuntimeWarning")

Mutation = Callable[[Path, dict], None]


@dataclass(frozen=True)
class BadInput:
    row: str  # as in README's table
    stage: list[str]  # python -m stages.<stage> [args]
    mutate: Mutation  # changes params (the dict) and files in the project directory
    message: str  # a regex the one-line error must match


def params_change(**changes: object) -> Mutation:
    """Set dotted keys of params.yaml."""
    def mutate(directory: Path, params: dict) -> None:
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            section = params
            for parent in parents:
                section = section[parent]
            section[leaf] = value
    return mutate


def jsonl_file(content: bytes, split: str = "train") -> Mutation:
    def mutate(directory: Path, params: dict) -> None:
        path = directory / "data/custom/bad" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        params["task"]["files"][split] = str(path.relative_to(directory))
    return mutate


def made_from_other_base(path: str, key: str) -> Mutation:
    """Record another base model's fingerprint under `key` (dotted) of a JSON artifact."""
    def mutate(directory: Path, params: dict) -> None:
        file = directory / path
        data = json.loads(file.read_text())
        *parents, leaf = key.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        section[leaf] = "f" * 64
        file.write_text(json.dumps(data))
    return mutate


def train_equals_test(directory: Path, params: dict) -> None:
    test = directory / params["task"]["files"]["test"]
    params["task"]["files"]["train"] = str(test.relative_to(directory))


def disk_full(directory: Path, params: dict) -> None:
    import neft.data.records

    def no_space(path: Path, examples: object) -> None:
        Path(path).write_bytes(b'{"id": "0", "prompt": "half a li')
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    neft.data.records.write_jsonl = no_space  # restored by the test (monkeypatch below)


def corrupt_checkpoint(content: Callable[[bytes], bytes], run: str = "probe") -> Mutation:
    """Leave checkpoints/<run>/checkpoint.pt as a crash mid-write or a full disk can: a real checkpoint
    of this run, passed through `content` (garbage, or cut short)."""
    def mutate(directory: Path, params: dict) -> None:
        import torch

        path = directory / "checkpoints" / run / "checkpoint.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "neft-checkpoint/v1", "fingerprint": "f" * 64, "step": 1, "parameters": [torch.ones(64, 64)]}, path)
        path.write_bytes(content(path.read_bytes()))
        assert (directory / "reports/train" / run / "plots").is_dir(), "the run's plots exist, to be kept"
    return mutate


def truncated(path: str) -> Mutation:
    """Cut a file to half its length, as a crash mid-copy or a full disk leaves it."""
    def mutate(directory: Path, params: dict) -> None:
        file = directory / path
        file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
    return mutate


def mask_json(change: Callable[[dict], object]) -> Mutation:
    """Rewrite artifacts/mask/mask.json as `change` returns it (or as it changed it in place)."""
    def mutate(directory: Path, params: dict) -> None:
        file = directory / "artifacts/mask/mask.json"
        data = json.loads(file.read_text())
        changed = change(data)
        file.write_text(json.dumps(data if changed is None else changed))
    return mutate


def a_fractional_index(data: dict) -> None:
    kind = next(iter(data["indices"]))
    layer = next(iter(data["indices"][kind]))
    data["indices"][kind][layer][0] += 0.9


def weights_copied_over(source: str, target: str) -> Mutation:
    """Copy another run's weights over `target` (a new modification time, as cp gives), keeping target's fingerprint.json."""
    def mutate(directory: Path, params: dict) -> None:
        shutil.copyfile(directory / source, directory / target)
    return mutate


FULL_RUN = run_name_of("full")

CASES = [
    BadInput("unknown method", ["train", "prefix"], lambda d, p: None, r"unknown training run 'prefix'; choose one of"),
    BadInput("unknown model source", ["prepare_model"], params_change(**{"model.source": "nowhere"}),
             r"model.source = 'nowhere': must be one of \['gguf_wheel', 'hub', 'random_init'\]"),
    BadInput("unknown task source", ["prepare_data"], params_change(**{"task.source": "nowhere"}),
             r"task.source = 'nowhere': must be one of"),
    BadInput("ratio <= 0", ["mask"], params_change(ratio=0), r"ratio = 0: must be a number in \(0, 1\)"),
    BadInput("ratio NaN", ["mask"], params_change(ratio=float("nan")), r"ratio = nan: must be a number in \(0, 1\)"),
    BadInput("ratio a string", ["mask"], params_change(ratio="six percent"), r"ratio = 'six percent': must be a number"),
    BadInput("ratio above the pool", ["mask"], params_change(ratio=0.95), r"ratio 0.95 needs \d+ neurons but the candidate pool has only"),
    BadInput("negative seed", ["mask"], params_change(seed=-1), r"seed = -1: must be a value >= 0"),
    BadInput("an empty rate grid", ["mask"], params_change(**{"methods.neft.learning_rates": []}),
             r"methods.neft.learning_rates = \[\]: must be a non-empty list of distinct numbers > 0"),
    BadInput("a rate that is not a number", ["train", "neft", "fast"], params_change(),
             r"the learning rate of neft must be a number > 0, got 'fast'"),
    BadInput("non-integer seed", ["mask"], params_change(seed=1.5), r"seed = 1.5: must be an integer"),
    BadInput("mask for another model", ["train", "neft"], made_from_other_base("artifacts/mask/mask.json", "made_from.base_model"),
             r"the mask artifacts/mask/mask.json was made from ffffffffffffffff\.\.\., but the base model in artifacts/model is"),
    BadInput("delta for another model", ["evaluate", "neft"],
             made_from_other_base("artifacts/train/neft/lr0.01/neft_config.json", "base_fingerprint"),
             r"the NeFT delta in artifacts/train/neft/lr0.01 was made from ffffffffffffffff\.\.\., but the base model"),
    BadInput("adapter for another model", ["evaluate", "lora"],
             made_from_other_base("artifacts/train/lora/lr0.01/made_from.json", "base_model"),
             r"the LoRA adapter in artifacts/train/lora/lr0.01 was made from ffffffffffffffff\.\.\., but the base model"),
    BadInput("empty JSONL", ["prepare_data"], jsonl_file(b""), r"data/custom/bad/train.jsonl: no records"),
    BadInput("truncated JSONL", ["prepare_data"],
             jsonl_file(b'{"source": "hola", "target": "hello"}\n{"source": "ad'),
             r"data/custom/bad/train.jsonl:2: not valid JSON"),
    BadInput("non-UTF-8 JSONL", ["prepare_data"], jsonl_file('{"source": "adiós", "target": "bye"}\n'.encode("latin-1")),
             r"data/custom/bad/train.jsonl:1: not UTF-8 \(byte 0xf3\); save the file as UTF-8"),
    BadInput("JSONL missing a field", ["prepare_data"], jsonl_file(b'{"source": "hola"}\n'),
             r"data/custom/bad/train.jsonl:1: needs non-empty string fields 'source', 'target'"),
    BadInput("JSONL field of the wrong type", ["prepare_data"], jsonl_file(b'{"source": "hola", "target": 7}\n'),
             r"data/custom/bad/train.jsonl:1: needs non-empty string fields 'source', 'target'"),
    BadInput("a split empty after filtering", ["prepare_data"], train_equals_test, r"task 'jsonl': the train split is empty"),
    BadInput("task files outside data/custom", ["prepare_data"], params_change(**{"task.files.valid": "data/mine/valid.jsonl"}),
             r"task.files.valid = 'data/mine/valid.jsonl' is outside data/custom/, this stage's DVC dependency, .*"
             r"move it under data/custom/ \(e.g. data/custom/mine/valid.jsonl\)"),
    BadInput("every example longer than max_length", ["train", "probe"], params_change(**{"task.max_length": 4}),
             r"every example's prompt is longer than max_length=4"),
    BadInput("missing Debian package", ["prepare_data"],
             lambda d, p: p.update(compose_params(["task=gettext-en-zh", "task.locale_dir=/nonexistent"])),
             r"zh_CN catalogs are missing under /nonexistent .* install them with: apt-get install -y --no-install-recommends"),
    BadInput("GGUF wheel not installed", ["prepare_model"],
             params_change(**{"model.source": "gguf_wheel", "model.wheel": {"distribution": "no-such-wheel", "file": "m.gguf"}}),
             r"model.wheel.distribution: package 'no-such-wheel' is not installed; run `make setup`"),
    BadInput("runtime.device=cuda without a GPU", ["train", "probe"], params_change(**{"runtime.device": "cuda"}),
             r"runtime.device = 'cuda' but no CUDA device is visible; use runtime.device=auto or cpu"),
    BadInput("disk full while writing", ["prepare_data"], disk_full, r"no space left on device \(.*train.jsonl\); free some and rerun"),
    BadInput("a garbage checkpoint", ["train", "probe"], corrupt_checkpoint(lambda data: b"\x00garbage" * 64),
             r"checkpoints/probe/checkpoint.pt: unreadable checkpoint, truncated or corrupt .*; "
             r"delete it to restart this run from scratch: rm checkpoints/probe/checkpoint.pt"),
    BadInput("a truncated checkpoint", ["train", "probe"], corrupt_checkpoint(lambda data: data[:len(data) // 2]),
             r"checkpoints/probe/checkpoint.pt: unreadable checkpoint, truncated or corrupt .*; delete it"),
    BadInput("a truncated base model", ["train", "probe"], truncated("artifacts/model/model.safetensors"),
             r"artifacts/model/model.safetensors: truncated or corrupt .safetensors file \(\d+ bytes, its header says \d+\); "
             r"restore it, or rerun the stage that writes it"),
    BadInput("truncated full-FT weights", ["evaluate", "full"], truncated(f"artifacts/train/{FULL_RUN}/model.safetensors"),
             rf"artifacts/train/{FULL_RUN}/model.safetensors: truncated or corrupt .safetensors file"),
    BadInput("a fractional mask index", ["train", "neft"], mask_json(a_fractional_index),
             r"artifacts/mask/mask.json: 'indices\.\w+\.\d+'\[0\] = \d+\.9 must be an integer neuron index; rerun the mask stage"),
    BadInput("a mask without its indices", ["train", "neft"], mask_json(lambda data: data.pop("indices") and None),
             r"artifacts/mask/mask.json: key 'indices' is missing; rerun the mask stage"),
    BadInput("a mask that is a list", ["train", "neft"], mask_json(lambda data: [data]),
             r"artifacts/mask/mask.json: expected a JSON object, got a list; rerun the mask stage"),
    BadInput("full-FT weights copied over the base model", ["export", "neft"],
             weights_copied_over(f"artifacts/train/{FULL_RUN}/model.safetensors", "artifacts/model/model.safetensors"),
             r"artifacts/model: the weights are not the ones artifacts/model/fingerprint.json records .*: "
             r"they were replaced or damaged; restore them"),
]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[case.row for case in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_everything_as_it_was(case, project, tmp_path, monkeypatch, capsys):
    import neft.data.records

    monkeypatch.setattr(neft.data.records, "write_jsonl", neft.data.records.write_jsonl)  # disk_full replaces it
    if case.row.startswith("runtime.device"):
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    directory = tmp_path / "project"
    shutil.copytree(project[0], directory)
    params = compose_params(TINY)
    case.mutate(directory, params)
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(directory)
    with inside(directory):
        monkeypatch.setattr(sys, "argv", [f"stages.{case.stage[0]}", *case.stage[1:]])
        with pytest.raises(SystemExit) as exit_status:
            runpy.run_module(f"stages.{case.stage[0]}", run_name="__main__")
    error = capsys.readouterr().err
    assert exit_status.value.code == 2, error
    assert error.count("\n") == 1 and error.startswith("error: "), error
    assert re.search(case.message, error), error
    assert snapshot(directory) == before, "a rejected run leaves every file as it was"


def test_after_a_full_disk_the_next_run_succeeds(project, tmp_path, monkeypatch, capsys):
    directory = tmp_path / "project"
    shutil.copytree(project[0], directory)
    (directory / "params.yaml").write_text(yaml.safe_dump(compose_params(TINY)))
    before = snapshot(directory)
    import neft.data.records

    original = neft.data.records.write_jsonl
    disk_full(directory, {})
    try:
        with inside(directory), pytest.raises(SystemExit):
            monkeypatch.setattr(sys, "argv", ["stages.prepare_data"])
            runpy.run_module("stages.prepare_data", run_name="__main__")
    finally:
        neft.data.records.write_jsonl = original
    with inside(directory):
        runpy.run_module("stages.prepare_data", run_name="__main__")
    assert snapshot(directory) == before, "the rerun rewrites the same prepared data, and no scratch directory remains"
