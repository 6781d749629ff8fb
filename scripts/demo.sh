#!/usr/bin/env bash
# The README demo: set up, train on the built-in synthetic data, evaluate, save, reload, run the pipeline, draw.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python examples/demo.py "$@"
