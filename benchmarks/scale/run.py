"""Scale-out on this machine: one run as 1 process x 2 threads against 2 processes x 1 thread (torchrun,
gloo), and a BAM study in sequence against fanned out on a local Ray with 2 workers. Each pair is run
interleaved and repeated (A B A B ...); medians and spreads are printed and written to
benchmarks/results/scale.json with the CPU they were measured on.

    .venv/bin/python benchmarks/scale/run.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import manytask as mt

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

RUN = {"seed": 1, "tasks": [{"name": "sst2", "max_train": 640, "max_eval": 300},
                            {"name": "rte", "max_train": 640, "max_eval": 277}],
       "model": {"encoder": "default", "max_seq_length": 64, "pooling": "mean", "dropout": 0.0},
       "train": {"batch_size": 32, "epochs": 1, "lr": 1.0e-4, "progress": False, "device": "cpu"}}


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - start


def training(tmp: Path, repeats: int, env: dict) -> dict:
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(RUN))
    out = {"1x2": [], "2x1": []}
    scores = {}
    for i in range(repeats):
        for mode in ("1x2", "2x1"):
            run = tmp / f"{mode}-{i}"
            if mode == "1x2":
                cmd = [PY, "-m", "manytask.cli", "train", "-c", str(cfg), "-o", str(run)]
                e = {**env, "OMP_NUM_THREADS": "2"}
            else:
                cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "manytask.cli",
                       "train", "-c", str(cfg), "-o", str(run)]
                e = {**env, "OMP_NUM_THREADS": "1"}
            timed(cmd, e)
            res = json.loads((run / "results.json").read_text())
            out[mode].append(res["examples_per_s"])
            scores[mode] = {t: round(100 * v, 4) for t, v in res["final"]["primary"].items()}
    same = all(abs(scores["1x2"][t] - scores["2x1"][t]) < 0.01 for t in scores["1x2"])  # within 0.01 points
    return {"examples_per_s": {m: _stats(v) for m, v in out.items()}, "dev_primary": scores, "same_dev_scores": same}


def study(tmp: Path, repeats: int, env: dict) -> dict:
    out = {"sequential": [], "ray-2": []}
    for i in range(repeats):
        for mode in ("sequential", "ray-2"):
            target = tmp / f"study-{mode}-{i}"
            cmd = [PY, "-m", "manytask.cli", "bam", "-c", "configs/bam_debug.yaml", "-o", str(target)]
            if mode == "ray-2":
                cmd += ["--workers", "2"]
            out[mode].append(timed(cmd, env))
            shutil.rmtree(target, ignore_errors=True)
    return {"wall_seconds": {m: _stats(v) for m, v in out.items()}}


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "MANYTASK_GLUE_DIR": os.environ.get("MANYTASK_GLUE_DIR", str(ROOT.parent / "shared" / "glue")),
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"cpu": mt.cpu_info(), "repeats": args.repeats, "training": training(tmp, args.repeats, env),
                  "study": study(tmp, args.repeats, env)}
    tr, st = result["training"], result["study"]
    print(f"CPU: {result['cpu'].get('model')} ({result['cpu']['cores']} cores); medians of {args.repeats} interleaved runs")
    print("| setting | median | min | max |\n|---|---|---|---|")
    for mode, label in (("1x2", "train, 1 process x 2 threads (ex/s)"), ("2x1", "train, 2 processes x 1 thread (ex/s)")):
        s = tr["examples_per_s"][mode]
        print(f"| {label} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    for mode, label in (("sequential", "bam_debug study, sequential (s)"), ("ray-2", "bam_debug study, Ray 2 workers (s)")):
        s = st["wall_seconds"][mode]
        print(f"| {label} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    print(f"same dev scores (1x2 vs 2x1): {tr['same_dev_scores']} {tr['dev_primary']}")
    dest = ROOT / "benchmarks" / "results" / "scale.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
