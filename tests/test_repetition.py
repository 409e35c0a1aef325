"""The repetition check that tells real translations from a model looping on its output."""

import pytest

from neft.repetition import repeats, repetition_rate


def test_a_looping_continuation_repeats_and_a_translation_does_not():
    looping = "==> Please check the package for the latest version.\n\n==> Please check the package for the latest version.\n\n==> Please"
    assert repeats(looping)
    assert not repeats("==> 软件包代理已提交更新版本。")
    assert not repeats("In the beginning God created the heavens and the earth.")


def test_chinese_repeats_by_character_and_the_thresholds_matter():
    assert repeats("更新版本" * 4)              # a 4-character phrase four times: its first 6-character stretch recurs 3 times
    assert not repeats("更新版本" * 3)          # ... three times: only twice
    assert repeats("更新版本" * 3, times=2)
    assert repeats("更新版本" * 3, span=4)
    assert not repeats("ab ab ab", span=6)                 # whitespace removed: "ababab", each 6-stretch once
    assert repeats("ab ab ab ab ab ab ab", span=4)


def test_rate_and_bad_arguments():
    assert repetition_rate(["a b c d e f g", "xyzxyzxyzxyzxyzxyz"]) == 0.5
    with pytest.raises(ValueError, match="no texts"):
        repetition_rate([])
    with pytest.raises(ValueError, match="times >= 2"):
        repeats("text", times=1)


def _script_table(tmp_path, *options):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    verse = "and they went into the land, and the land was good, and the land gave its fruit."
    loop = "And he said unto them, Go ye. And he said unto them, Go ye. And he said unto them, Go ye."
    rows = [{"id": 0, "reference": verse, "prediction": verse}, {"id": 1, "reference": verse, "prediction": loop}]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [sys.executable, str(ROOT / "scripts" / "repetition.py"), str(path), *options]
    completed = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    cells = completed.stdout.strip().splitlines()[-1].split("|")
    return [cell.strip() for cell in cells[2:-1]]  # predictions, repeating, rate, references_repeating


def test_the_script_counts_loops_by_default_not_a_repeated_short_phrase(tmp_path):
    """A verse that says " the land" three times is not a loop (the 6-character test counts it);
    a sentence said three times is."""
    assert repeats("and they went into the land, and the land was good, and the land gave its fruit.")
    assert _script_table(tmp_path) == ["2", "1", "0.500", "0"]
    assert _script_table(tmp_path, "--span", "6") == ["2", "2", "1.000", "2"]  # both references too
