#!/usr/bin/env bash
# Creates .venv with the pinned requirements (once; later calls only check them). Sourced by run.sh and test.sh.
set -euo pipefail
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -r requirements.txt
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" TOKENIZERS_PARALLELISM=false
