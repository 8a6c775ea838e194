"""The merged bundle against separate per-task models, in fp32 and int8 (and bf16 where the CPU has it),
under two kinds of traffic, with every server up at once and measured in alternating windows.

- Servers: merged bundle (fp32, int8[, bf16]) and one full model per task (fp32, int8: each task its own
  quantised model). All are started first; then, round after round, each is loaded for one window while
  the others idle (A B C D A B C D ...), so a drift of the machine's speed hits them alike. Each server's
  throughput is the median over rounds; each ratio is the median of the per-round ratios, with its range.
- Traffic: ``every-task`` (each request asks every task of the set that takes its input kind) and
  ``one-task`` (each request asks one random task of the set).
- In-process: the same predictors without HTTP (batches of 32 inputs), to separate model cost from serving.
- Resident memory of each server process after warm-up; dev scores of each task under each precision.

    .venv/bin/python benchmarks/serve_compare.py --flex runs/flex_mini      # after benchmarks/flex_mini/run.sh

Prints tables and writes benchmarks/results/serve_compare.json with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import manytask as mt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import MANYTASK, dev_inputs, free_port, templates_for, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's worker is the server itself here)."""
    import psutil

    total = 0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def templates(task_set: list[str], inputs: dict, traffic: str) -> list[dict]:
    """Every-task traffic: serve_load's request kinds; one-task traffic: one request kind per task."""
    if traffic == "every-task":
        return templates_for(task_set, inputs)
    return [{"tasks": [t], "inputs": inputs[t]} for pair in (False, True)
            for t in task_set if ("text_pair" in inputs[t][0]) == pair]


def window(url: str, tmpl: list[dict], args) -> dict:
    spec = Path(args.work) / "client.json"
    spec.write_text(json.dumps({"url": url, "templates": tmpl, "concurrency": args.concurrency,
                                "warmup": args.warmup, "duration": args.window}))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--client", str(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def servers(flex_dir: Path, selection: dict, task_set: list[str], precisions: list[str]) -> dict[str, list[str]]:
    full = [f"{t}={flex_dir / selection['tasks'][t]['variants']['full']['run']}" for t in task_set]
    out = {}
    for p in precisions:
        out[f"merged-{p}"] = ["serve", str(flex_dir / "bundle"), "--precision", p, "--force", "--watch-interval", "0"]
        out[f"separate-{p}"] = ["serve", *[x for r in full for x in ("--run", r)], "--precision", p]
    return out


def in_process(flex_dir: Path, selection: dict, task_set: list[str], precisions: list[str], inputs: dict,
               args) -> dict:
    """Task predictions per second of each predictor on batches of 32, alternating predictors each round."""
    import torch

    preds = {}
    for p in precisions:
        merged = mt.Bundle(flex_dir / "bundle").model(precision=p)
        separate = separate_models(flex_dir, selection, task_set, p)
        preds[f"merged-{p}"] = lambda inputs, tasks, m=merged: m.predict(inputs, tasks=tasks)
        preds[f"separate-{p}"] = lambda inputs, tasks, ms=separate: [ms[t].predict(inputs, task=t) for t in tasks]
    rng = random.Random(0)
    out = {}
    for traffic in ("every-task", "one-task"):
        rates: dict[str, list[float]] = {k: [] for k in preds}
        for _ in range(args.rounds):
            for name, pr in preds.items():
                done, start = 0, time.perf_counter()
                for tmpl in templates(task_set, inputs, traffic) * 2:
                    batch = [rng.choice(tmpl["inputs"]) for _ in range(32)]
                    inputs = [(x["text"], x["text_pair"]) if "text_pair" in x else x["text"] for x in batch]
                    with torch.inference_mode():
                        pr(inputs, tmpl["tasks"])
                    done += 32 * len(tmpl["tasks"])
                rates[name].append(done / (time.perf_counter() - start))
        out[traffic] = summarize(rates)
    return out


def summarize(rates: dict[str, list[float]]) -> dict:
    out = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v} for k, v in rates.items()}
    for base in ("separate-fp32", "separate-int8"):
        for k in rates:
            if k.startswith("merged-") and base in rates:
                ratios = [a / b for a, b in zip(rates[k], rates[base])]
                out[k][f"ratio_vs_{base}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def separate_models(flex_dir: Path, selection: dict, task_set: list[str], precision: str) -> dict:
    """Each task's full fine-tuning run as its own model: the baseline the bundle is measured against."""
    return {t: mt.Run.open(flex_dir / selection["tasks"][t]["variants"]["full"]["run"]).model("best", "cpu", precision)
            for t in task_set}


def dev_table(flex_dir: Path, selection: dict, task_set: list[str], precisions: list[str]) -> dict:
    """Dev scores per task and precision: the bundle's (cached by `manytask bundle score`), and the separate
    full models' under the same precision."""
    out = {}
    for p in precisions:
        merged = mt.Bundle(flex_dir / "bundle").score(p)[p]
        out[f"merged-{p}"] = {t: 100 * merged[t]["score"] for t in task_set if "score" in merged.get(t, {})}
        sep = {}
        for t, model in separate_models(flex_dir, selection, task_set, p).items():
            run = mt.Run.open(flex_dir / selection["tasks"][t]["variants"]["full"]["run"])
            sep[t] = 100 * model.scores(run.cfg).primary[t]
        out[f"separate-{p}"] = sep
    return {k: {**v, "avg": statistics.fmean(v.values())} for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flex", type=Path, default=ROOT / "runs" / "flex_mini")
    ap.add_argument("--tasks", default="all", help="comma-separated tasks of the bundle, or 'all'")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=8.0, help="measured seconds per server and round")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--inputs-per-task", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_compare.json")
    ap.add_argument("--work", default="/tmp")
    args = ap.parse_args()
    flex_dir = args.flex.resolve()
    selection = json.loads((flex_dir / "selection.json").read_text())
    task_set = list(selection["tasks"]) if args.tasks == "all" else args.tasks.split(",")
    precisions = ["fp32", "int8"] + (["bf16"] if {"avx512_bf16", "amx_bf16"} & set(mt.cpu_info().get("flags", [])) else [])
    inputs = dev_inputs(flex_dir, task_set, args.inputs_per_task)
    result = {"cpu": mt.cpu_info(), "tasks": task_set, "precisions": precisions, "rounds": args.rounds,
              "window_s": args.window, "concurrency": args.concurrency}
    result["dev"] = dev_table(flex_dir, selection, task_set, precisions)
    procs, urls, rss = {}, {}, {}
    try:
        for name, cmd in servers(flex_dir, selection, task_set, precisions).items():
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            procs[name] = subprocess.Popen([*MANYTASK, *cmd, "--port", str(port)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, env={**os.environ, "MANYTASK_ADMIN_TOKEN": ""})
        for name in procs:
            wait_healthy(urls[name], procs[name], timeout=300)
        http = {}
        for traffic in ("every-task", "one-task"):
            rates: dict[str, list[float]] = {k: [] for k in procs}
            tmpl = templates(task_set, inputs, traffic)
            for _ in range(args.rounds):
                for name in procs:
                    rates[name].append(window(urls[name], tmpl, args)["task_predictions_per_s"])
            http[traffic] = summarize(rates)
        rss = {name: rss_mb(p.pid) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=60)
    result["http"], result["rss_mb"] = http, rss
    result["in_process"] = in_process(flex_dir, selection, task_set, precisions, inputs, args)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"\nwrote {args.out}")


def report(r: dict) -> str:
    lines = [f"CPU: {r['cpu'].get('model')} ({r['cpu']['cores']} cores); tasks: {', '.join(r['tasks'])}; "
             f"medians of {r['rounds']} alternating rounds", ""]
    for where in ("http", "in_process"):
        for traffic, rows in r[where].items():
            lines += [f"{where}, {traffic} traffic (task predictions/s):", "",
                      "| server | median | range | vs separate fp32 | vs separate int8 | RSS MB | dev avg |",
                      "|---|---|---|---|---|---|---|"]
            for name, s in rows.items():
                ratio = lambda b: (f"{s[b]['median']:.2f}x ({s[b]['min']:.2f}–{s[b]['max']:.2f})"  # noqa: E731
                                   if b in s else "—")
                rss = f"{r['rss_mb'].get(name, float('nan')):.0f}" if where == "http" else "—"
                lines.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f}–{s['max']:.1f} | "
                             f"{ratio('ratio_vs_separate-fp32')} | {ratio('ratio_vs_separate-int8')} | {rss} | "
                             f"{r['dev'][name]['avg']:.1f} |")
            lines.append("")
    lines += ["Dev scores (x100) per task:", "", "| server | " + " | ".join(r["tasks"]) + " | avg |",
              "|---|" + "---|" * (len(r["tasks"]) + 1)]
    for name, d in r["dev"].items():
        lines.append(f"| {name} | " + " | ".join(f"{d.get(t, float('nan')):.1f}" for t in r["tasks"])
                     + f" | {d['avg']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
