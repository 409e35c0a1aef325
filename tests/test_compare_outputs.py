"""scripts/compare_outputs.py: which outputs two runs wrote with the same bytes, file by file."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT, inside

spec = importlib.util.spec_from_file_location("compare_outputs", ROOT / "scripts/compare_outputs.py")
compare_outputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_outputs)


def cache_manifest(md5: str, files: dict[str, str]) -> None:
    path = compare_outputs.CACHE / md5[:2] / md5[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"relpath": name, "md5": digest} for name, digest in files.items()]))


def test_directories_are_compared_file_by_file(tmp_path):
    with inside(tmp_path):
        cache_manifest("aa01.dir", {"model.safetensors": "m1", "summary.json": "s1", "old.json": "o"})
        cache_manifest("bb02.dir", {"model.safetensors": "m1", "summary.json": "s2", "new.json": "n"})
        old = {"artifacts/train": "aa01.dir", "artifacts/mask.json": "f1", "artifacts/gone": "g", "reports/x": "cc03.dir"}
        new = {"artifacts/train": "bb02.dir", "artifacts/mask.json": "f1", "artifacts/added": "a", "reports/x": "dd04.dir"}
        assert compare_outputs.compare(old, new) == [
            "artifacts/added: only in the new run",
            "artifacts/gone: only in the old run",
            "artifacts/mask.json: identical",
            "artifacts/train: differ ['summary.json']; removed ['old.json']; added ['new.json']",
            "reports/x: differs (a manifest is not in this cache)",
        ]
