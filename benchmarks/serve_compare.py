"""The merged bundle against separate per-task models under two kinds of traffic, every server up at once and
measured in alternating windows, over HTTP and in-process, with each variant's dev scores.

- Servers: the merged bundle in fp32, int8 (per tensor), int8-channel, auto (the precision plan: int8 on the
  layers that keep every task within 0.5 points), ONNX Runtime int8, bf16 where the CPU has it natively; one
  full model per task in fp32 and int8 (each task its own quantised model). All are started first; then,
  round after round, each is loaded for one window while the others idle (A B C D A B C D ...), so a drift of
  the machine's speed hits them alike. Each throughput is the median over rounds; each ratio the median of
  the per-round ratios, with its range. The load client runs on the same cores: its CPU share is reported.
- Traffic: ``every-task`` (each request asks every task of the set that takes its input kind) and
  ``one-task`` (each request asks one random task of the set).
- In-process: the same predictors without HTTP (batches of 32 inputs), also merged fp32 with torch.compile;
  HTTP ÷ in-process per server says what serving costs.
- Resident memory of each server process after warm-up; dev scores of each task under each variant, and
  whether the goal holds: merged ≥ 4× separate fp32 on every-task traffic with every task within 0.5 points.

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


def variants(bf16: bool) -> dict[str, dict]:
    """Each server: how `manytask serve` starts it and how the dev table scores it."""
    out = {"merged-fp32": {"serve": ["--precision", "fp32"], "precision": "fp32"},
           "merged-int8": {"serve": ["--precision", "int8", "--force"], "precision": "int8"},
           "merged-int8-channel": {"serve": ["--precision", "int8-channel", "--force"], "precision": "int8-channel"},
           "merged-auto": {"serve": ["--precision", "auto"], "precision": "auto"},
           "merged-onnx-int8": {"serve": ["--precision", "int8", "--runtime", "onnx", "--force"], "precision": "int8",
                                "runtime": "onnx"}}
    if bf16:
        out["merged-bf16"] = {"serve": ["--precision", "bf16", "--force"], "precision": "bf16"}
    out["separate-fp32"] = {"precision": "fp32", "separate": True}
    out["separate-int8"] = {"precision": "int8", "separate": True}
    return out


def servers(flex_dir: Path, selection: dict, task_set: list[str], kinds: dict) -> dict[str, list[str]]:
    full = [f"{t}={flex_dir / selection['tasks'][t]['variants']['full']['run']}" for t in task_set]
    out = {}
    for name, v in kinds.items():
        if v.get("separate"):
            out[name] = ["serve", *[x for r in full for x in ("--run", r)], "--precision", v["precision"]]
        else:
            out[name] = ["serve", str(flex_dir / "bundle"), *v["serve"], "--watch-interval", "0"]
    return out


def predictors(flex_dir: Path, selection: dict, task_set: list[str], kinds: dict) -> dict:
    """In-process callables (inputs, tasks) for each variant, and merged fp32 with torch.compile."""
    from manytask.models.multitask import compile_layers
    from manytask.serving.onnx_runtime import OnnxPredictor

    bundle = mt.Bundle(flex_dir / "bundle")
    preds = {}
    for name, v in kinds.items():
        if v.get("separate"):
            ms = separate_models(flex_dir, selection, task_set, v["precision"])
            preds[name] = lambda inputs, tasks, ms=ms: [ms[t].predict(inputs, task=t) for t in tasks]
        elif v.get("runtime") == "onnx":
            onnx = OnnxPredictor(bundle, v["precision"])
            preds[name] = lambda inputs, tasks, o=onnx: o.predict(
                [x if isinstance(x, str) else x[0] for x in inputs],
                None if isinstance(inputs[0], str) else [x[1] for x in inputs], tasks)
        else:
            m = bundle.model(precision=v["precision"])
            preds[name] = lambda inputs, tasks, m=m: m.predict(inputs, tasks=tasks)
    compiled = bundle.model(precision="fp32")
    compile_layers(compiled.net)
    preds["merged-fp32+compile"] = lambda inputs, tasks, m=compiled: m.predict(inputs, tasks=tasks)
    return preds


def in_process(preds: dict, task_set: list[str], inputs: dict, args) -> dict:
    """Task predictions per second of each predictor on batches of 32, alternating predictors each round (one
    untimed pass first: warm-up, and torch.compile's compiling)."""
    import torch

    rng = random.Random(0)
    out = {}
    for traffic in ("every-task", "one-task"):
        rates: dict[str, list[float]] = {k: [] for k in preds}
        for r in range(args.rounds + 1):
            for name, pr in preds.items():
                done, start = 0, time.perf_counter()
                for tmpl in templates(task_set, inputs, traffic) * 2:
                    batch = [rng.choice(tmpl["inputs"]) for _ in range(32)]
                    items = [(x["text"], x["text_pair"]) if "text_pair" in x else x["text"] for x in batch]
                    with torch.inference_mode():
                        pr(items, tmpl["tasks"])
                    done += 32 * len(tmpl["tasks"])
                if r > 0:
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


def dev_table(flex_dir: Path, selection: dict, task_set: list[str], kinds: dict) -> dict:
    """Dev scores per task and variant: the bundle's in each precision (``auto``: under its plan; cached with the
    bundle), ONNX Runtime's int8, and the separate full models' under the same precision."""
    from manytask.serving.launch import checked_scores

    bundle = mt.Bundle(flex_dir / "bundle")
    out = {}
    for name, v in kinds.items():
        if v.get("separate"):
            sep = {}
            for t, model in separate_models(flex_dir, selection, task_set, v["precision"]).items():
                run = mt.Run.open(flex_dir / selection["tasks"][t]["variants"]["full"]["run"])
                sep[t] = 100 * model.scores(run.cfg).primary[t]
            out[name] = sep
            continue
        if v.get("runtime") == "onnx":
            scored = checked_scores(bundle, v["precision"], 100.0, True, echo=lambda *_: None, runtime="onnx")
            got = scored[f"onnx-{v['precision']}"]
        else:
            got = bundle.score(v["precision"])[v["precision"]]
        out[name] = {t: 100 * got[t]["score"] for t in task_set if "score" in got.get(t, {})}
    return {k: {**v, "avg": statistics.fmean(v.values())} for k, v in out.items()}


def goal(result: dict, task_set: list[str]) -> dict:
    """Per merged variant: its every-task throughput ÷ separate fp32 (HTTP and in-process), its largest dev drop
    against the bundle's fp32, and whether ≥ 4× with every task within 0.5 points holds."""
    base = result["dev"]["merged-fp32"]
    out = {}
    for name in result["dev"]:
        if not name.startswith("merged-"):
            continue
        drop = max(base[t] - result["dev"][name][t] for t in task_set)
        http = result["http"]["every-task"][name].get("ratio_vs_separate-fp32", {}).get("median")
        local = result["in_process"]["every-task"][name].get("ratio_vs_separate-fp32", {}).get("median")
        out[name] = {"http_ratio": http, "in_process_ratio": local, "worst_drop_points": drop,
                     "met_http": bool(http and http >= 4 and drop <= 0.5),
                     "met_in_process": bool(local and local >= 4 and drop <= 0.5)}
    return out


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
    kinds = variants(bool({"avx512_bf16", "amx_bf16"} & set(mt.cpu_info().get("flags", []))))
    inputs = dev_inputs(flex_dir, task_set, args.inputs_per_task)
    result = {"cpu": mt.cpu_info(), "tasks": task_set, "variants": list(kinds), "rounds": args.rounds,
              "window_s": args.window, "concurrency": args.concurrency}
    result["dev"] = dev_table(flex_dir, selection, task_set, kinds)  # also makes the auto plan and ONNX export
    procs, urls, rss, client = {}, {}, {}, {}
    try:
        for name, cmd in servers(flex_dir, selection, task_set, kinds).items():
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            procs[name] = subprocess.Popen([*MANYTASK, *cmd, "--port", str(port)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, env={**os.environ, "MANYTASK_ADMIN_TOKEN": ""})
        for name in procs:
            wait_healthy(urls[name], procs[name], timeout=900)
        http = {}
        for traffic in ("every-task", "one-task"):
            rates: dict[str, list[float]] = {k: [] for k in procs}
            shares: dict[str, list[float]] = {k: [] for k in procs}
            tmpl = templates(task_set, inputs, traffic)
            for _ in range(args.rounds):
                for name in procs:
                    got = window(urls[name], tmpl, args)
                    rates[name].append(got["task_predictions_per_s"])
                    shares[name].append(got["client_cpu_share"])
            http[traffic] = summarize(rates)
            client[traffic] = {k: statistics.median(v) for k, v in shares.items()}
        rss = {name: rss_mb(p.pid) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=60)
    result["http"], result["rss_mb"], result["client_cpu_share"] = http, rss, client
    result["in_process"] = in_process(predictors(flex_dir, selection, task_set, kinds), task_set, inputs, args)
    result["goal"] = goal(result, task_set)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"\nwrote {args.out}")


def report(r: dict) -> str:
    lines = [f"CPU: {r['cpu'].get('model')} ({r['cpu']['cores']} cores; {', '.join(r['cpu'].get('flags', []))}); "
             f"tasks: {', '.join(r['tasks'])}; medians of {r['rounds']} alternating rounds", ""]
    for traffic in r["http"]:
        lines += [f"{traffic} traffic (task predictions/s):", "",
                  "| server | HTTP median (range) | vs separate fp32 | vs separate int8 | in-process | HTTP ÷ "
                  "in-process | client CPU | RSS MB | dev avg |", "|---|---|---|---|---|---|---|---|---|"]
        local = r["in_process"][traffic]
        for name in list(r["http"][traffic]) + [n for n in local if n not in r["http"][traffic]]:
            s = r["http"][traffic].get(name)
            ratio = lambda b, s=s: (f"{s[b]['median']:.2f}× ({s[b]['min']:.2f}–{s[b]['max']:.2f})"  # noqa: E731
                                    if s and b in s else "—")
            inp = local.get(name)
            lines.append(
                f"| {name} | " + (f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})" if s else "—") + " | "
                f"{ratio('ratio_vs_separate-fp32')} | {ratio('ratio_vs_separate-int8')} | "
                + (f"{inp['median']:.1f}" if inp else "—") + " | "
                + (f"{s['median'] / inp['median']:.2f}" if s and inp else "—") + " | "
                + (f"{100 * r['client_cpu_share'][traffic][name]:.0f}%" if s else "—") + " | "
                + (f"{r['rss_mb'][name]:.0f}" if name in r["rss_mb"] else "—") + " | "
                + (f"{r['dev'][name]['avg']:.1f}" if name in r["dev"] else "same as merged-fp32") + " |")
        lines.append("")
    lines += ["In-process ratios to separate fp32 (every-task):", ""]
    for name, s in r["in_process"]["every-task"].items():
        if "ratio_vs_separate-fp32" in s:
            q = s["ratio_vs_separate-fp32"]
            lines.append(f"- {name}: {q['median']:.2f}× ({q['min']:.2f}–{q['max']:.2f})")
    lines += ["", "Dev scores (x100) per task:", "", "| server | " + " | ".join(r["tasks"]) + " | avg |",
              "|---|" + "---|" * (len(r["tasks"]) + 1)]
    for name, d in r["dev"].items():
        lines.append(f"| {name} | " + " | ".join(f"{d.get(t, float('nan')):.1f}" for t in r["tasks"])
                     + f" | {d['avg']:.1f} |")
    lines += ["", "Goal: merged ≥ 4× separate fp32 (every-task) with every task within 0.5 points of the bundle's fp32:",
              "", "| merged variant | HTTP ratio | in-process ratio | worst task drop (points) | met over HTTP | "
              "met in-process |", "|---|---|---|---|---|---|"]
    for name, g in r["goal"].items():
        fmt = lambda x: f"{x:.2f}×" if x else "—"  # noqa: E731
        lines.append(f"| {name} | {fmt(g['http_ratio'])} | {fmt(g['in_process_ratio'])} | "
                     f"{g['worst_drop_points']:+.1f} | {'yes' if g['met_http'] else 'no'} | "
                     f"{'yes' if g['met_in_process'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
