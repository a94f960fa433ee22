#!/bin/sh
# The GPU suite on a lent GPU machine, in one shot: torch and transformers only, no network, no
# pip install (benchmarks/gpu_suite.py; under 8 minutes on one H100/H200). Writes
# $OUT/gpu_suite/gpu_suite.json and gpu_suite.md; extra arguments go to the script.
set -eu
cd "$(dirname "$0")/.."
PYTHONPATH=. exec python benchmarks/gpu_suite.py --out "${OUT:-/tmp}/gpu_suite" "$@"
