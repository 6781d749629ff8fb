#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install detr_hf with every extra. Usage: source scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${DETR_HF_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
# Pin torch/torchvision to the CPU-usable wheels this kind of machine carries on disk, so pip never pulls a
# multi-GB build from the index. Elsewhere, any torch>=2.4 that pyproject.toml admits works.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[dev]"
