#!/usr/bin/env bash
# The bam_mini study: `bash benchmarks/bam_mini/run.sh` (background it: ~1 h on a 2-core CPU).
# Re-running resumes: finished stages are reused. The report is copied to benchmarks/results/<OUT name>/.
# CONFIG, OUT and SEEDS select another study (e.g. CONFIG=benchmarks/bam_mini/caps1000.yaml).
set -euo pipefail
cd "$(dirname "$0")/../.."
export MANYTASK_GLUE_DIR="${MANYTASK_GLUE_DIR:-../shared/glue}"
CONFIG="${CONFIG:-benchmarks/bam_mini/config.yaml}"
OUT="${OUT:-runs/bam_mini}"
start=$(date +%s)
.venv/bin/manytask bam --config "$CONFIG" --out "$OUT" --seeds "${SEEDS:-1,2,3}"
echo "wall seconds: $(( $(date +%s) - start ))"
dest="benchmarks/results/$(basename "$OUT")"
mkdir -p "$dest"
cp "$OUT/report.md" "$OUT/report.json" "$OUT"/*.png "$dest/"
