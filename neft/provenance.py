"""Fingerprints: what each artifact was made from, recorded when it is written and checked when it
is loaded, so that a mask, delta or adapter from another base model is refused even when the shapes
agree (a fine-tuned sibling, a re-quantised copy).

A model directory's fingerprint is the sha256 of its safetensors files, in name order; the stage that
writes the weights stores it in `fingerprint.json` beside them, so readers need not rehash gigabytes.
A file's fingerprint (mask.json) is the sha256 of its bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from neft.errors import UserError

FINGERPRINT_FILE = "fingerprint.json"
MADE_FROM_FILE = "made_from.json"
_CHUNK = 1 << 20


class ProvenanceError(UserError):
    """An artifact was made from something other than what it is being used with."""


def file_sha256(path: Path, digest: hashlib._Hash | None = None) -> str:
    digest = digest or hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the directory's safetensors files (names and bytes, in name order)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ProvenanceError(f"{model_dir} holds no .safetensors weights to fingerprint")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        file_sha256(path, digest)
    return digest.hexdigest()


def record_fingerprint(model_dir: Path) -> str:
    """Fingerprint freshly written weights and store it beside them."""
    fingerprint = weights_sha256(model_dir)
    (Path(model_dir) / FINGERPRINT_FILE).write_text(json.dumps({"sha256": fingerprint}) + "\n")
    return fingerprint


def model_fingerprint(model_dir: Path) -> str:
    """The stored fingerprint of a model directory (computed when none was stored: your own model)."""
    stored = Path(model_dir) / FINGERPRINT_FILE
    if stored.is_file():
        return json.loads(stored.read_text())["sha256"]
    return weights_sha256(model_dir)


def write_made_from(directory: Path, made_from: dict[str, str]) -> None:
    """Record beside an artifact that has no field for it (a PEFT adapter) what it was made from."""
    (Path(directory) / MADE_FROM_FILE).write_text(json.dumps(made_from, indent=2, sort_keys=True) + "\n")


def read_made_from(directory: Path) -> dict[str, str]:
    path = Path(directory) / MADE_FROM_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def require_same(what: str, recorded: str | None, actual: str, used_with: str) -> None:
    """Refuse `what` unless it was made from `actual`; an artifact without a record passes."""
    if recorded and recorded != actual:
        raise ProvenanceError(f"{what} was made from {recorded[:16]}..., but {used_with} is {actual[:16]}...: "
                              f"it belongs to another model or run; rerun the stages that make it (dvc repro)")
