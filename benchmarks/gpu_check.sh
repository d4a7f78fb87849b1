#!/usr/bin/env bash
# The smoke pipeline on a GPU: per-stage times, peak GPU memory and the claims' difference from the
# CPU run (benchmarks/gpu_check.py says what it writes). From the repository root, after
# `make setup` with a CUDA build of torch:
#
#   bash benchmarks/gpu_check.sh                  # cuda, float32, every core
#   bash benchmarks/gpu_check.sh --dtype bfloat16 --cores 1   # one stage at a time: each stage's own peak
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py "$@"
