#!/usr/bin/env bash
# `make demo`, timed: `bash benchmarks/demo/run.sh` (on a quiet machine). Writes benchmarks/results/demo/:
# make_demo_output.txt (what make printed, with wall seconds), results.json (the run's), machine.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=benchmarks/results/demo
mkdir -p "$out"
make venv >/dev/null
start=$(date +%s)
make -s demo 2>&1 | tr '\r' '\n' | grep -v -e '^INFO' -e '^train: ' -e '^ *$' | tee "$out/make_demo_output.txt"
echo "total wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/make_demo_output.txt"
cp runs/demo/results.json "$out/results.json"
.venv/bin/python -c "import json; r = json.load(open('runs/demo/results.json')); print(f\"training steps: {r['train_seconds']:.0f} s at {r['examples_per_s']:.1f} examples/s (results.json)\")" | tee -a "$out/make_demo_output.txt"
.venv/bin/python -c "import json, manytask as mt; print(json.dumps({'cpu': mt.cpu_info()}, indent=2))" > "$out/machine.json"
