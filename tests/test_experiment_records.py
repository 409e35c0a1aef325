"""The experiment records are data: every committed results table (the question pages under
docs/experiments/, the README's findings, reports/experiments/<question>/tables/) and figure equals
what `scripts/experiment_records.py` regenerates from the committed predictions, and every file the
run index names exists."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

INDEX = ROOT / "reports/experiments/index.json"


def _records_module():
    spec = importlib.util.spec_from_file_location("experiment_records", ROOT / "scripts/experiment_records.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("experiment_records", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    result = subprocess.run([sys.executable, str(ROOT / "scripts/experiment_records.py"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    written = [line for line in result.stdout.splitlines() if line]
    assert written
    return out, written


def test_every_committed_table_page_and_figure_equals_the_regenerated_one(regenerated):
    out, written = regenerated
    compared, differing = [], []
    for path in map(Path, written):
        relative = path.relative_to(out)
        if relative.as_posix() == "reports/experiments/index.json":
            continue  # compared below, without the commits
        committed = ROOT / relative
        assert committed.is_file(), f"{relative} is regenerated but not committed: run scripts/experiment_records.py"
        compared.append(relative)
        if committed.read_bytes() != path.read_bytes():
            differing.append(relative.as_posix())
    assert not differing, f"differ from the regenerated ones (run `python scripts/experiment_records.py`): {differing}"
    names = {relative.as_posix() for relative in compared}
    assert "README.md" in names and "docs/experiments/en-zh-gemma.md" in names
    assert any(name.endswith(".png") for name in names)


def test_the_index_equals_the_regenerated_one_but_for_commits(regenerated):
    out, _ = regenerated

    def without_commits(path):
        return [{key: value for key, value in entry.items() if key != "commit"} for entry in json.loads(path.read_text())]

    assert without_commits(INDEX) == without_commits(out / "reports/experiments/index.json")


def test_every_file_the_index_names_exists_and_every_chosen_run_has_predictions():
    entries = json.loads(INDEX.read_text())
    assert len(entries) > 100
    keys = ("path", "params", "predictions", "metrics_file", "train", "valid_loss")
    missing = [(entry["id"], entry[key]) for entry in entries for key in keys if entry.get(key) and not (ROOT / entry[key]).exists()]
    assert not missing, missing
    statuses = {entry["status"] for entry in entries}
    assert statuses == {"chosen", "candidate", "superseded"}
    assert all(entry["predictions"] for entry in entries if entry["status"] == "chosen")
    assert all(entry["question"].startswith("archive/") for entry in entries if entry["status"] == "superseded")
    assert len({entry["id"] for entry in entries}) == len(entries)


def test_one_layout_every_run_file_is_named_by_its_method():
    records = ROOT / "reports/experiments"
    allowed = {"predictions": ".jsonl", "metrics": ".json", "train": ".json", "valid_loss": ".tsv"}
    methods = {"base", "full", "lora", "neft", "probe"}
    for run in (path for path in records.glob("*/runs/*") if path.is_dir()):
        for path in run.rglob("*"):
            if path.is_dir():
                continue
            relative = path.relative_to(run)
            if relative.parts[0] in allowed:
                assert len(relative.parts) == 2 and path.stem in methods and path.suffix == allowed[relative.parts[0]], path
            else:
                assert relative.parts[0] == "report" or relative.as_posix() in {"params.yaml", "mask_summary.json"}, path


def test_a_page_naming_an_unknown_table_is_refused():
    module = _records_module()
    with pytest.raises(SystemExit, match="no table named x/y"):
        module.splice("<!-- BEGIN TABLE x/y -->\nold\n<!-- END TABLE -->\n", {}, "page.md")
    assert module.splice("a\n<!-- BEGIN TABLE x/y -->\nold\n<!-- END TABLE -->\n", {"x/y": "new"}, "page.md") == \
        "a\n<!-- BEGIN TABLE x/y -->\nnew\n<!-- END TABLE -->\n"


def test_holm_adjusts_in_order_and_caps_at_one():
    module = _records_module()
    assert [round(p, 6) for p in module._holm([0.01, 0.04, 0.03, 0.5])] == [0.04, 0.09, 0.09, 0.5]
    assert module._holm([0.9, 0.8]) == [1.0, 1.0]
