#!/usr/bin/env bash
# The MeTaL RTE ladder: `bash benchmarks/mmtl_rte/run.sh` (background it; it prints its wall seconds).
# Re-running resumes finished stages. The study report and the ensemble go to benchmarks/results/mmtl_rte/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MANYTASK_GLUE_DIR="${MANYTASK_GLUE_DIR:-../shared/glue}"
OUT="${OUT:-runs/mmtl_rte}"
start=$(date +%s)
.venv/bin/manytask bam --config benchmarks/mmtl_rte/config.yaml --out "$OUT" --seeds "${SEEDS:-1,2,3}"
# the last rung: an ensemble (mean of probabilities) of the seeds' fine-tuned models with slice heads
.venv/bin/manytask ensemble "$OUT"/seed-*/multi-plus-slices-plus-ft/rte --task rte --out "$OUT/ensemble" \
  | tee "$OUT/ensemble.txt"
echo "wall seconds: $(( $(date +%s) - start ))"
dest=benchmarks/results/mmtl_rte
mkdir -p "$dest"
cp "$OUT/report.md" "$OUT/report.json" "$OUT"/*.png "$OUT/ensemble.txt" "$dest/"
cp "$OUT/ensemble/eval.json" "$dest/ensemble_eval.json"
