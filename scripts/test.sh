#!/usr/bin/env bash
# The test command the README names: the whole suite, slow-marked tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q --timeout 900 "$@" tests
