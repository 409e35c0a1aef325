"""Fingerprints: what each artifact was made from, recorded when it is written and checked when it
is loaded, so that a mask, delta or adapter from another base model is refused even when the shapes
agree (a fine-tuned sibling, a re-quantised copy).

A model directory's fingerprint is the sha256 of its safetensors files, in name order; the stage that
writes the weights stores it in `fingerprint.json` beside them, with each file's size, so readers need
not rehash gigabytes: they hash again only when a file's size differs from the record or the file is
newer than the record (weights copied over, some `dvc checkout`s), and refuse weights whose hash then
differs. No times are stored: identical weights give an identical record, which DVC can skip on.
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


def _sizes(model_dir: Path) -> dict[str, int]:
    """name -> size in bytes of the directory's safetensors files."""
    return {path.name: path.stat().st_size for path in sorted(Path(model_dir).glob("*.safetensors"))}


def record_fingerprint(model_dir: Path) -> str:
    """Fingerprint freshly written weights and store it beside them (written after them, so newer), with their sizes."""
    fingerprint = weights_sha256(model_dir)
    (Path(model_dir) / FINGERPRINT_FILE).write_text(json.dumps({"sha256": fingerprint, "files": _sizes(model_dir)}) + "\n")
    return fingerprint


_verified: dict[tuple[str, ...], str] = {}  # (directory, sizes and times) -> hash, for what this process already hashed


def model_fingerprint(model_dir: Path) -> str:
    """The fingerprint of a model directory: the stored one while its files have the recorded sizes and none
    is newer than the record; otherwise the files are hashed again (once per process), and weights whose hash
    differs from the record (another model copied over these) are refused. Without a stored one (your own
    model), the hash."""
    model_dir = Path(model_dir)
    stored = model_dir / FINGERPRINT_FILE
    if not stored.is_file():
        return weights_sha256(model_dir)
    try:
        record = json.loads(stored.read_text())
        recorded = record["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ProvenanceError(f"{stored}: not a fingerprint record; rerun the stage that writes {model_dir} (dvc repro)") from None
    files = sorted(model_dir.glob("*.safetensors"))
    recorded_at = stored.stat().st_mtime_ns
    if record.get("files") == _sizes(model_dir) and all(path.stat().st_mtime_ns <= recorded_at for path in files):
        return recorded
    key = (str(model_dir.resolve()), *(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files))
    if key not in _verified:
        _verified[key] = weights_sha256(model_dir)
    if _verified[key] != recorded:
        raise ProvenanceError(f"{model_dir}: the weights are not the ones {stored} records (sha256 {_verified[key][:16]}..., "
                              f"recorded {recorded[:16]}...): they were replaced or damaged; restore them "
                              f"(dvc checkout {model_dir}) or rerun the stage that writes them (dvc repro)")
    return recorded


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
