#!/usr/bin/env bash
# The bam_mini study: `bash benchmarks/bam_mini/run.sh` (background it: ~1.5 h on a 2-core CPU).
# Re-running resumes: finished stages are reused. The report is copied to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MANYTASK_GLUE_DIR="${MANYTASK_GLUE_DIR:-../shared/glue}"
OUT="${OUT:-runs/bam_mini}"
start=$(date +%s)
.venv/bin/manytask bam --config benchmarks/bam_mini/config.yaml --out "$OUT" --seeds "${SEEDS:-1,2,3}"
echo "wall seconds: $(( $(date +%s) - start ))"
mkdir -p benchmarks/results/bam_mini
cp "$OUT/report.md" "$OUT/report.json" "$OUT"/*.png benchmarks/results/bam_mini/
