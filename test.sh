#!/usr/bin/env bash
# Set up and run the test suite (CPU, tiny random models, no network, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"
source setup.sh
.venv/bin/python -m pytest -q -n "$(nproc)" --dist loadgroup tests "$@"
