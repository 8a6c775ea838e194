#!/usr/bin/env bash
# The flex_mini pipeline: `bash benchmarks/flex_mini/run.sh` (background it: ~40 min on a 2-core CPU).
# Re-running resumes: finished runs are reused. The report is copied to benchmarks/results/flex_mini/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MANYTASK_GLUE_DIR="${MANYTASK_GLUE_DIR:-../shared/glue}"
OUT="${OUT:-runs/flex_mini}"
start=$(date +%s)
.venv/bin/manytask flex --config benchmarks/flex_mini/config.yaml --out "$OUT"
echo "wall seconds: $(( $(date +%s) - start ))"
mkdir -p benchmarks/results/flex_mini
cp "$OUT/report.md" "$OUT/report.json" "$OUT/flex.png" "$OUT/selection.json" benchmarks/results/flex_mini/
