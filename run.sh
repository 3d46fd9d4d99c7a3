#!/usr/bin/env bash
# The embedded default end to end on a CPU: set up, fetch and prepare SmolLM2-135M + Jane Austen,
# dump activations, train the lens, evaluate it. Extra --key=value arguments go to every step,
# e.g. `bash run.sh --max_iters=20` for a quick look.
set -euo pipefail
cd "$(dirname "$0")"
source setup.sh
config=config/austen_smollm2.py
.venv/bin/python data/austen/prepare.py
.venv/bin/python dump.py "$config" "$@"
.venv/bin/python train.py "$config" "$@"
.venv/bin/python eval.py "$config" "$@"
