#!/usr/bin/env bash
# Creates .venv-trl: a separate virtual environment with TRL, for the side-by-side benchmarks
# (bench/dpo_cpu.py runs bench/trl_dpo_worker.py with it). Not needed by rlhflab itself.
#
# torch goes in first, exactly pinned (2.13.0 resolves to the local CPU wheel); TRL and its
# dependencies are then installed under a constraints file that holds torch at that version, so
# nothing can pull a CUDA build. Idempotent: when the venv already imports the pinned versions,
# it only says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv-trl
TORCH=2.13.0
TRL=1.16.0

check() {
    "$VENV/bin/python" - "$TORCH" "$TRL" <<'EOF' 2>/dev/null
import sys
import torch, trl, transformers, accelerate, datasets  # noqa: F401
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert trl.__version__ == sys.argv[2], trl.__version__
from trl import DPOConfig, DPOTrainer  # noqa: F401
print(f".venv-trl: torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}")
EOF
}

if [ -x "$VENV/bin/python" ] && check; then
    echo "$VENV is ready"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH" > "$CONSTRAINTS"
"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" -c "$CONSTRAINTS" "trl==$TRL" psutil
check || { echo "setup_trl.sh: $VENV does not import torch $TORCH and trl $TRL" >&2; exit 1; }
