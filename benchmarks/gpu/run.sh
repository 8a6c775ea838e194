#!/usr/bin/env bash
# Everything the GPU paths need, on one GPU, in under 8 minutes: `bash benchmarks/gpu/run.sh` writes
# benchmarks/results/gpu/gpu.json (with the device's name) and prints a table. On a CPU, in CI's smoke form:
# `bash benchmarks/gpu/run.sh --device cpu --dry-run --out /tmp/gpu`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MANYTASK_GLUE_DIR="${MANYTASK_GLUE_DIR:-../shared/glue}"
PY="${PY:-.venv/bin/python}"
start=$(date +%s)
"$PY" benchmarks/gpu/check.py "$@"
echo "wall seconds: $(( $(date +%s) - start ))"
