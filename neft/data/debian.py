"""Task data from Debian packages, unpacked into a cache rather than installed (set-up runs it).

    python -m neft.data.debian bible                     # the SWORD modules -> ~/.cache/neft/sword
    python -m neft.data.debian gettext [overrides]       # task=gettext-en-zh's catalogs -> task.locale_dir
    python -m neft.data.debian gettext-tests             # the tests' two .deb files -> ~/.cache/neft/gettext-tests

Some task data ships in Debian packages (SWORD Bible modules, gettext catalogs). Installing them
needs root and runs their maintainer scripts (a database server, init and PAM changes, for a few
`.mo` files), so instead `apt-get download` fetches each `.deb` (no root; it reads the machine's
apt lists) and only the wanted members of its file tree are unpacked into a directory of ours,
next to a `packages.json` that records the version of every package unpacked. The readers
(neft.data.bible, neft.data.gettext) only read the cache, so a pipeline stage never downloads. A package may be
pinned to a version, so that every machine unpacks the bytes that the committed results were made
from; `apt-get download` then fails once the mirror drops that version (snapshot.debian.org keeps it).

The cache lives in the user's cache directory, not in the project: `dvc exp run --queue` and
`--temp` run in fresh clones of the repository, which would not carry git-ignored data.

The pipeline's set-up (`bash setup.sh`, run by `make pipeline`) unpacks `bible` and `gettext`; the
tests' set-up (`bash setup.sh tests`, run by `make setup` and `make test`) only downloads
`gettext-tests`: the .deb files of two small packages of the task (670 KiB), at their pinned
versions, kept as they are, so that a test unpacks real packages offline, without the task's 34.
"""

from __future__ import annotations

import fnmatch
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from neft.data import bible, gettext
from neft.data.records import DataError
from neft.errors import UserError
from neft.io import atomic_directory, write_json

VERSIONS_FILE = gettext.UNPACKED_VERSIONS_FILE  # where the gettext reader takes package versions from
USER_ERROR_EXIT = 2  # the stages' exit status for a user error (stages/_common.py)
TARGETS = ("bible", "gettext", "gettext-tests")
# The tests' real packages: small, and sed's pinned version is not the one installed where the
# committed En->Zh data was prepared (the mirror dropped it), yet its zh_CN catalog has the same bytes.
TEST_PACKAGES = ("diffutils", "sed")
TEST_DEB_DIR = Path("~/.cache/neft/gettext-tests")
TEST_COMMAND = "python -m neft.data.debian gettext-tests"


def recorded_versions(destination: Path) -> dict[str, str] | None:
    """{package: version} that the last unpacking into `destination` recorded; None if none did."""
    record = Path(destination).expanduser() / VERSIONS_FILE
    return json.loads(record.read_text()) if record.is_file() else None


def download_debs(pins: Mapping[str, str | None], directory: Path, retry_command: str) -> dict[str, Path]:
    """{package: its .deb} for every package of `pins` (package -> version, None for apt's candidate),
    downloaded into the empty `directory` by one apt-get run: apt loads its cache once, not per package."""
    wanted = [package if version is None else f"{package}={version}" for package, version in sorted(pins.items())]
    result = subprocess.run(["apt-get", "download", *wanted], cwd=directory, capture_output=True, text=True, check=False)
    debs = {deb_field(deb, "Package"): deb for deb in directory.glob("*.deb")}
    missing = sorted(set(pins) - set(debs))
    if result.returncode != 0 or missing:
        # apt's own error lines name the package: one it cannot locate, a version it lacks, a failed fetch.
        errors = [line for line in result.stderr.splitlines() if line.startswith("E:")] or [f"no .deb for {missing}"]
        raise DataError(f"apt-get download failed ({'; '.join(errors)}); check the network and the apt lists "
                        f"(`sudo apt-get update` refreshes them), then rerun: {retry_command}")
    return debs


def deb_field(deb: Path, field: str) -> str:
    """One field of a .deb's control file (Package, Version, ...)."""
    return subprocess.run(["dpkg-deb", "--show", f"--showformat=${{{field}}}", str(deb)],
                          capture_output=True, text=True, check=True).stdout


def unpack_members(deb: Path, pattern: str, strip_prefix: str, destination: Path) -> list[Path]:
    """Write the regular files of `deb` whose path matches `pattern` (fnmatch, no leading "./")
    under `destination`, at their path relative to `strip_prefix`; the files written."""
    tree = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    written = []
    with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
        for member in archive:
            name = PurePosixPath(member.name.removeprefix("./"))
            if not member.isfile() or not fnmatch.fnmatchcase(str(name), pattern):
                continue
            path = destination / name.relative_to(strip_prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.extractfile(member).read())
            written.append(path)
    return written


def is_unpacked(pins: Mapping[str, str | None], destination: Path) -> bool:
    """Whether `destination` holds exactly these packages, each at its pinned version if it has one."""
    recorded = recorded_versions(destination) or {}
    return sorted(recorded) == sorted(pins) and all(version in (None, recorded[package]) for package, version in pins.items())


def unpack_packages(pins: Mapping[str, str | None], pattern: str, strip_prefix: str, destination: Path,
                    retry_command: str) -> dict[str, str]:
    """Download every package of `pins` (package -> version, None for apt's candidate) and unpack
    its members matching `pattern` into `destination`, which is replaced as a whole once all of them
    succeeded; {package: version}. Nothing is downloaded when `destination` already holds them."""
    destination = Path(destination).expanduser()
    if is_unpacked(pins, destination):
        return recorded_versions(destination)
    versions = {}
    with atomic_directory(destination) as scratch, tempfile.TemporaryDirectory() as downloads:
        for package, deb in sorted(download_debs(pins, Path(downloads), retry_command).items()):
            if not unpack_members(deb, pattern, strip_prefix, scratch):
                raise DataError(f"Debian package {package!r} ({deb.name}) has no file matching {pattern}")
            versions[package] = deb_field(deb, "Version")
        write_json(scratch / VERSIONS_FILE, versions)
    return versions


def unpack_modules() -> dict[str, str]:
    """Unpack the SWORD module trees of the Bible task's pinned packages into bible.SWORD_DIR."""
    return unpack_packages(bible.PINNED_VERSIONS, "usr/share/sword/*", "usr/share/sword", bible.SWORD_DIR,
                           bible.UNPACK_COMMAND)


def unpack_catalogs(packages: Sequence[str], language: str, locale_dir: Path) -> dict[str, str]:
    """Unpack the `language` catalogs of `packages`, at their pinned versions, into `locale_dir`."""
    pins = {package: gettext.PINNED_VERSIONS.get(package) for package in packages}
    return unpack_packages(pins, f"usr/share/locale/{language}/LC_MESSAGES/*.mo", "usr/share/locale",
                           locale_dir, gettext.unpack_command(locale_dir))


def debs_in(directory: Path) -> dict[str, Path]:
    return {deb_field(deb, "Package"): deb for deb in sorted(directory.glob("*.deb"))} if directory.is_dir() else {}


def fetch_test_debs() -> dict[str, Path]:
    """{package: its .deb} for TEST_PACKAGES at their pinned versions, downloaded into TEST_DEB_DIR
    unless they are there already."""
    pins = {package: gettext.PINNED_VERSIONS[package] for package in TEST_PACKAGES}
    directory = TEST_DEB_DIR.expanduser()
    debs = debs_in(directory)
    if sorted(debs) != sorted(pins) or any(deb_field(debs[package], "Version") != pins[package] for package in pins):
        with atomic_directory(directory) as scratch:
            download_debs(pins, scratch, TEST_COMMAND)
        debs = debs_in(directory)
    return debs


def unpack_target(target: str, overrides: Sequence[str]) -> dict[str, str]:
    if target not in TARGETS or (overrides and target != "gettext"):
        raise UserError("usage: python -m neft.data.debian bible | gettext [hydra overrides of task=gettext-en-zh] "
                        "| gettext-tests")
    if target == "bible":
        return unpack_modules()
    if target == "gettext-tests":
        return {package: deb_field(deb, "Version") for package, deb in fetch_test_debs().items()}
    from neft.config import compose_config  # loads torch: only where the task config is needed

    task = compose_config(["task=gettext-en-zh", *overrides]).task
    return unpack_catalogs(list(task.packages), task.language, Path(task.locale_dir))


def main(arguments: Sequence[str]) -> None:
    """Unpack one target and print {package: version}; a user error is one line and exit 2."""
    try:
        versions = unpack_target(arguments[0] if arguments else "", arguments[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    print(json.dumps(versions, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
