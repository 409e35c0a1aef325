"""Writing stage outputs so that a failure never leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from neft.errors import UserError


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `target` only if the block finishes without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    readable_as_umask_allows(scratch)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(scratch, target)


def readable_as_umask_allows(directory: Path) -> None:
    """Give `directory` and everything in it the read (and, for directories, search) permission the
    umask allows: mkdtemp makes 0700 and some writers (transformers' safetensors files) 0600, which
    would hide results from colleagues on a shared machine."""
    umask = os.umask(0)  # reading the umask means setting it: set straight back
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | ((0o555 if path.is_dir() else 0o444) & ~umask))


def write_text(path: Path, text: str) -> None:
    """Write a file through a temporary file and an atomic rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class CorruptFileError(UserError):
    """A weights or checkpoint file is truncated or not what its name says (a crash mid-write, a full disk,
    a partial copy)."""


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or garbled .safetensors file with one line naming it, from its header alone
    (cheap at any size): the 8-byte header length, the JSON header, and a file exactly as long as the
    header's last tensor ends."""
    path = Path(path)
    fix = "restore it, or rerun the stage that writes it (dvc repro)"
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= header_length <= size - 8:
                raise ValueError("header length past the end of the file")
            header = json.loads(handle.read(header_length))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, IndexError, TypeError):
        raise CorruptFileError(f"{path}: not a readable .safetensors file (truncated or corrupt, {size} bytes); {fix}") from None
    if 8 + header_length + end != size:
        raise CorruptFileError(f"{path}: truncated or corrupt .safetensors file ({size} bytes, its header says "
                               f"{8 + header_length + end}); {fix}")


def check_safetensors_in(directory: Path, names: Iterable[str] | None = None) -> None:
    """`check_safetensors` on every .safetensors file of `directory` (or on `names` in it, where they exist)."""
    paths = sorted(Path(directory).glob("*.safetensors")) if names is None else [Path(directory) / name for name in names]
    for path in paths:
        if path.is_file():
            check_safetensors(path)


def load_safetensors(path: Path) -> dict[str, Any]:
    """safetensors.torch.load_file, with a truncated or corrupt file refused as a user error naming it."""
    from safetensors.torch import load_file  # torch stays out of modules that only write JSON

    check_safetensors(path)
    return load_file(path)
