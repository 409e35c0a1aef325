"""English -> Chinese software messages from the gettext catalogs of Debian packages.

A package's zh_CN catalog (`<locale_dir>/zh_CN/LC_MESSAGES/<domain>.mo`) maps each English message
(msgid) to its translation (msgstr). The task's `locale_dir` is a cache that set-up fills from the
packages' `.deb` files without installing them (`python -m neft.data.debian gettext`); a directory
of installed catalogs (/usr/share/locale) reads the same. polib
reads the compiled catalogs. Kept are translated, non-fuzzy, singular messages that read like
sentences: at least `min_words` words, one line, no printf (`%s`) or brace (`{name}`) placeholders,
and a translation that contains Chinese. Runs of whitespace (option help aligns columns with them)
become one space, so variants dedupe.

The split unit is the Debian package: valid and test hold out whole packages, so strings that one
package repeats in variants never cross the train/test line. A message that several packages share
is kept once, in the split that comes first of test, valid, train.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neft.data.records import DataError, Example, subsample, translation_example

SPLITS = ("train", "valid", "test")
# Written next to the catalogs that neft.data.debian unpacks: {package: version}.
UNPACKED_VERSIONS_FILE = "packages.json"
# The Debian 12 version of each package of task=gettext-en-zh that is unpacked: the one the committed
# En->Zh results were prepared from where the mirror still has it, else the oldest one it has, whose
# zh_CN catalogs have the same sha256 (PostgreSQL 15.20 did change its translations, so 15.18 is
# pinned). A package of the task missing here is unpacked at apt's candidate version.
PINNED_VERSIONS = {
    "adduser": "3.134",
    "appstream": "0.16.1-2+b1",
    "apt": "2.6.1",
    "bash": "5.2.15-2+b13",
    "binutils-common": "2.40-2",
    "coreutils": "9.1-1",
    "diffutils": "1:3.8-4",
    "dpkg": "1.21.23",
    "findutils": "4.9.0-4",
    "gettext": "0.21-12",
    "git": "1:2.39.5-0+deb12u3",
    "gnupg-l10n": "2.2.40-1.1+deb12u2",
    "gsettings-desktop-schemas": "43.0-1",
    "libapt-pkg6.0": "2.6.1",
    "libc-l10n": "2.36-9+deb12u14",
    "libgdk-pixbuf2.0-common": "2.42.10+dfsg-1+deb12u4",
    "libglib2.0-data": "2.74.6-2+deb12u9",
    "libgnutls30": "3.7.9-2+deb12u7",
    "libgstreamer1.0-0": "1.22.0-2+deb12u1",
    "libgtk2.0-common": "2.24.33-2+deb12u1",
    "libpam-runtime": "1.5.2-6+deb12u3",
    "libpq5": "15.18-0+deb12u1",
    "login": "1:4.13+dfsg1-1+deb12u2",
    "make": "4.3-4.1",
    "man-db": "2.11.2-2",
    "packagekit": "1.2.6-5+deb12u1",
    "postgresql-15": "15.18-0+deb12u1",
    "postgresql-client-15": "15.18-0+deb12u1",
    "procps": "2:4.0.2-3",
    "sed": "4.9-1+deb12u1",
    "systemd": "252.38-1~deb12u1",
    "tar": "1.34+dfsg-1.2+deb12u1",
    "wget": "1.21.3-1+deb12u1",
    "xz-utils": "5.4.1-1+deb12u2",
}
_PLACEHOLDER = re.compile(r"%|\{[^}]*\}")
_CHINESE = re.compile(r"[\u4e00-\u9fff]")


def install_command(packages: Sequence[str]) -> str:
    return f"apt-get install -y --no-install-recommends {' '.join(sorted(packages))}"


def unpack_command(locale_dir: Path) -> str:
    return f"python -m neft.data.debian gettext task.locale_dir={locale_dir}"


@dataclass(frozen=True)
class MessagePair:
    package: str
    domain: str
    source: str
    target: str


def catalog_path(locale_dir: Path, language: str, domain: str) -> Path:
    return Path(locale_dir).expanduser() / language / "LC_MESSAGES" / f"{domain}.mo"


def is_sentence_like(source: str, target: str, min_words: int) -> bool:
    return (
        len(source.split()) >= min_words
        and "\n" not in source
        and "\n" not in target
        and not _PLACEHOLDER.search(source)
        and not _PLACEHOLDER.search(target)
        and bool(_CHINESE.search(target))
    )


def read_catalog(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) of every translated, non-fuzzy, singular message in a compiled catalog."""
    import polib

    try:
        catalog = polib.mofile(str(path))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable gettext .mo catalog ({error})") from None
    return [
        (entry.msgid, entry.msgstr)
        for entry in catalog
        if entry.msgid and entry.msgstr and not entry.msgid_plural and "fuzzy" not in entry.flags
    ]


def package_messages(
    packages: Mapping[str, Sequence[str]], locale_dir: Path, language: str, min_words: int
) -> dict[str, list[MessagePair]]:
    """package -> its sentence-like pairs, in catalog order; a missing catalog names the commands that get it."""
    missing = {package for package, domains in packages.items()
               for domain in domains if not catalog_path(locale_dir, language, domain).is_file()}
    if missing:
        raise DataError(f"{language} catalogs are missing under {locale_dir} for package(s) {sorted(missing)}; "
                        f"unpack them there, no root needed: {unpack_command(locale_dir)}; "
                        f"or, as root, install them with: {install_command(missing)}")
    return {
        package: [
            MessagePair(package, domain, " ".join(source.split()), " ".join(target.split()))
            for domain in domains
            for source, target in read_catalog(catalog_path(locale_dir, language, domain))
            if is_sentence_like(source.strip(), target.strip(), min_words)
        ]
        for package, domains in packages.items()
    }


def split_by_package(
    messages: Mapping[str, Sequence[MessagePair]], valid_packages: Sequence[str], test_packages: Sequence[str]
) -> dict[str, list[MessagePair]]:
    """Whole packages per split; each English message once, in test before valid before train.
    The package lists are checked when the config loads (neft.config.TaskConfig)."""
    held_out = set(valid_packages) | set(test_packages)
    members = {"test": list(test_packages), "valid": list(valid_packages),
               "train": [package for package in messages if package not in held_out]}
    seen: set[str] = set()
    splits: dict[str, list[MessagePair]] = {}
    for split in ("test", "valid", "train"):
        splits[split] = []
        for package in members[split]:
            for pair in messages[package]:
                if pair.source not in seen:
                    seen.add(pair.source)
                    splits[split].append(pair)
    return splits


def package_versions(packages: Sequence[str], locale_dir: Path) -> dict[str, str]:
    """Debian version of each package: as recorded when its catalogs were unpacked into
    `locale_dir`, else the installed one (empty where dpkg does not know it)."""
    record = Path(locale_dir).expanduser() / UNPACKED_VERSIONS_FILE
    if record.is_file():
        unpacked = json.loads(record.read_text())
        return {package: unpacked.get(package, "") for package in sorted(packages)}
    versions = {}
    for package in sorted(packages):
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
        versions[package] = result.stdout.strip() if result.returncode == 0 else ""
    return versions


def catalog_manifest(packages: Mapping[str, Sequence[str]], locale_dir: Path, language: str) -> dict[str, Any]:
    """What the prepared set was made from: each package's version and each catalog's sha256, so a
    package update that changes strings shows up as a changed data/prepared/summary.json."""
    versions = package_versions(list(packages), locale_dir)
    return {
        package: {
            "version": versions[package],
            "catalogs": {domain: hashlib.sha256(catalog_path(locale_dir, language, domain).read_bytes()).hexdigest()
                         for domain in domains},
        }
        for package, domains in sorted(packages.items())
    }


def build_gettext_splits(
    packages: Mapping[str, Sequence[str]],
    locale_dir: Path,
    language: str,
    valid_packages: Sequence[str],
    test_packages: Sequence[str],
    min_words: int,
    instruction: str,
    max_examples: Mapping[str, int | None],
    seed: int,
) -> dict[str, list[Example]]:
    splits = split_by_package(package_messages(packages, locale_dir, language, min_words), valid_packages, test_packages)
    examples = {}
    for split in SPLITS:
        items = [translation_example(f"{pair.package}/{pair.domain}/{index}", instruction, pair.source, pair.target)
                 for index, pair in enumerate(splits[split])]
        examples[split] = subsample(items, max_examples[split], seed)
    return examples

