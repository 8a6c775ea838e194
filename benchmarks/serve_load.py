"""Serving under load: one merged bundle against the same tasks as separate full single-task models.

For each task set and each way of serving it, the script starts `manytask serve` in its own process
on loopback, waits for /healthz, then runs a client *process* that keeps a fixed number of requests
in flight for a fixed time (one dev input per request, asking every task of the set that takes that
kind of input) and reports throughput and latency percentiles. Dev scores come from the flex run's
selection (best checkpoint on the capped dev sets; the oracle test shows the bundle answers exactly as
the selected runs do).

    .venv/bin/python benchmarks/serve_load.py --flex runs/flex_mini      # after benchmarks/flex_mini/run.sh

Writes benchmarks/results/serve_load.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANYTASK = [str(ROOT / ".venv" / "bin" / "manytask")] if (ROOT / ".venv" / "bin" / "manytask").exists() else \
    [sys.executable, "-m", "manytask.cli"]


# ---- the client process ---------------------------------------------------------------------------------
async def _load(url: str, templates: list[dict], concurrency: int, warmup: float, duration: float) -> dict:
    import httpx

    latencies: list[float] = []
    predictions = errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        nonlocal predictions, errors
        rng = random.Random(i)
        while (now := time.perf_counter()) < stop_at:
            t = templates[rng.randrange(len(templates))]
            item = t["inputs"][rng.randrange(len(t["inputs"]))]
            r = await client.post(url + "/v1/predict", json={"inputs": [item], "tasks": t["tasks"]})
            done = time.perf_counter()
            if now >= measure_from and done <= stop_at:
                if r.status_code == 200:
                    latencies.append(done - now)
                    predictions += len(t["tasks"])
                else:
                    errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(i, client) for i in range(concurrency)))
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99
    return {"requests": len(lat), "errors": errors, "seconds": duration,
            "requests_per_s": len(lat) / duration, "task_predictions_per_s": predictions / duration,
            "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "mean_ms": 1000 * statistics.fmean(lat) if lat else None}


def client_main(args) -> None:
    """The load client's process; it also reports its own CPU time, the share of the machine's cores the client
    took from the server on the same machine."""
    spec = json.loads(Path(args.client).read_text())
    cpu, wall = time.process_time(), time.perf_counter()
    result = asyncio.run(_load(spec["url"], spec["templates"], spec["concurrency"], spec["warmup"], spec["duration"]))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result["client_cpu_share"] = cpu / (wall * (os.cpu_count() or 1))
    print(json.dumps(result))


# ---- the benchmark driver ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server at {url} not healthy after {timeout}s")


def dev_inputs(flex_dir: Path, tasks: list[str], per_task: int) -> dict[str, list[dict]]:
    """Dev inputs of each task, as the flex run read them (same caps and re-splits)."""
    import manytask as mt

    out = {}
    for d in mt.task_data(mt.flex_config(flex_dir, tasks), with_train=False).values():
        examples = next(iter(d.evals.values()))[:per_task]
        out[d.name] = [{"text": e.text_a, **({"text_pair": e.text_b} if e.text_b is not None else {})} for e in examples]
    return out


def templates_for(task_set: list[str], inputs: dict[str, list[dict]]) -> list[dict]:
    """One request kind per input kind: single texts ask the single-text tasks, pairs the pair tasks."""
    out = []
    for pair in (False, True):
        tasks = [t for t in task_set if ("text_pair" in inputs[t][0]) == pair]
        if tasks:
            pool = [x for t in tasks for x in inputs[t]]
            out.append({"tasks": tasks, "inputs": pool})
    return out


def run_one(mode: str, task_set: list[str], flex_dir: Path, selection: dict, templates: list[dict], args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*MANYTASK, "serve", "--port", str(port), "--max-batch", str(args.max_batch),
           "--max-wait-ms", str(args.max_wait_ms)]
    if mode == "merged":
        cmd.insert(len(MANYTASK) + 1, str(flex_dir / "bundle"))
    else:
        for t in task_set:
            cmd += ["--run", f"{t}={flex_dir / selection['tasks'][t]['variants']['full']['run']}"]
    env = {**os.environ, "MANYTASK_ADMIN_TOKEN": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_healthy(url, proc)
        spec_path = Path(args.work) / f"client-{mode}-{len(task_set)}.json"
        spec_path.write_text(json.dumps({"url": url, "templates": templates, "concurrency": args.concurrency,
                                         "warmup": args.warmup, "duration": args.duration}))
        res = subprocess.run([sys.executable, __file__, "--client", str(spec_path)], capture_output=True, text=True,
                             check=True)
        result = json.loads(res.stdout.strip().splitlines()[-1])
        layers = json_get(url + "/v1/tasks")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    run_layers = {t["name"]: t["layers_run"] for t in layers["tasks"]}
    return {"mode": mode, "tasks": task_set, **result, "layers_per_task_alone": run_layers}


def json_get(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=10).json()


def scores(selection: dict, task_set: list[str], mode: str, setting: str) -> dict:
    out = {}
    for t in task_set:
        sel = selection["tasks"][t]
        variant = "full" if mode == "separate" else sel["selected"][setting]
        out[t] = 100 * sel["variants"][variant]["score"]
    return out


def layers_per_input(selection: dict, task_set: list[str], mode: str, setting: str, L: int) -> int:
    """Transformer layers one input goes through, if it asked every task of the set."""
    if mode == "separate":
        return L * len(task_set)
    chosen = [selection["tasks"][t]["variants"][selection["tasks"][t]["selected"][setting]] for t in task_set]
    return max(v["split_depth"] for v in chosen) + sum(v["layers"] for v in chosen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--flex", type=Path, default=ROOT / "runs" / "flex_mini", help="a finished `manytask flex` run")
    ap.add_argument("--sets", default="mrpc,stsb;mrpc,stsb,rte,qnli;all",
                    help="task sets separated by ';' (comma-separated tasks, or 'all')")
    ap.add_argument("--concurrency", type=int, default=16, help="requests kept in flight by the client")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--inputs-per-task", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    ap.add_argument("--work", default="/tmp")
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return

    flex_dir = args.flex.resolve()
    selection = json.loads((flex_dir / "selection.json").read_text())
    import yaml

    setting = yaml.safe_load((flex_dir / "flex.yaml").read_text()).get("bundle", "mixed")
    L = selection["encoder_layers"]
    every = list(selection["tasks"])
    sets = [every if s.strip() == "all" else s.split(",") for s in args.sets.split(";")]
    inputs = dev_inputs(flex_dir, sorted({t for s in sets for t in s}), args.inputs_per_task)
    rows = []
    for task_set in sets:
        templates = templates_for(task_set, inputs)
        for mode in ("separate", "merged"):
            r = run_one(mode, task_set, flex_dir, selection, templates, args)
            sc = scores(selection, task_set, mode, setting)
            r.update(dev_scores=sc, dev_average=statistics.fmean(sc.values()),
                     layers_per_input=layers_per_input(selection, task_set, mode, setting, L))
            rows.append(r)
            print(f"{mode:8s} {len(task_set)} tasks: {r['requests_per_s']:.1f} req/s, "
                  f"{r['task_predictions_per_s']:.1f} task-pred/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                  f"errors {r['errors']}", flush=True)
    for task_set in sets:
        sep, mer = (next(r for r in rows if r["mode"] == m and r["tasks"] == task_set) for m in ("separate", "merged"))
        mer["speedup_vs_separate"] = mer["task_predictions_per_s"] / sep["task_predictions_per_s"]
        mer["dev_average_minus_separate"] = mer["dev_average"] - sep["dev_average"]
    import torch

    meta = {"flex_run": str(args.flex), "bundle_setting": setting, "encoder_layers": L, "concurrency": args.concurrency,
            "duration_s": args.duration, "warmup_s": args.warmup, "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms, "inputs_per_request": 1, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, args.out)
    print()
    print(table(rows))
    print(f"\nwrote {args.out}")


def table(rows: list[dict]) -> str:
    lines = ["| tasks | served as | layers / input | req/s | task predictions/s | p50 ms | p99 ms | dev avg | speed-up | Δ dev |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {len(r['tasks'])} ({', '.join(r['tasks'])}) | {r['mode']} | {r['layers_per_input']} | "
                     f"{r['requests_per_s']:.1f} | {r['task_predictions_per_s']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['dev_average']:.1f} | "
                     + (f"{r['speedup_vs_separate']:.2f}x | {r['dev_average_minus_separate']:+.1f} |"
                        if "speedup_vs_separate" in r else "1.00x | — |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
