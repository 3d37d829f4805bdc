#!/usr/bin/env bash
# setup_env.sh — create .venv with everything the demo, the scripts and the tests need.
# Idempotent: a second run only re-checks the installed packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
# a .venv without a working pip (an interrupted earlier run) is made again from scratch
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  [[ -e .venv ]] && echo "setup_env.sh: .venv is incomplete (no working pip); recreating it" >&2
  "$PY" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision pinned together (spandrel imports torchvision)
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev,onnx]"
.venv/bin/python -c "import torch, torchvision, spandrel, hybridmoe_arch; print('environment ready: torch', torch.__version__, '| spandrel', spandrel.__version__)"
