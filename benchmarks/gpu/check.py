"""Prove the GPU paths on a GPU (benchmarks/gpu/run.sh): the GPU-marked tests; the demo's config trained on the
device in fp32, bf16 and fp16 (dev table and examples/s); the Hugging Face Trainer (with its length grouping) on
the same data and settings as a single-task manytask run, for the ratio; a GPU-trained run resumed on the CPU;
a bundle served on the device in fp32 and bf16 against separate models, interleaved; and the autocast dtype
that evaluation and teacher targets really run in. Writes OUT/gpu.json (with the device's name) and prints a
table. ``--device cpu --dry-run`` runs every part at toy size on the CPU (CI does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import manytask as mt  # noqa: E402


def part(name: str, results: dict):
    """Record one part's result, or its error, and go on to the next."""
    def wrap(fn):
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **fn()}
        except Exception as e:  # a failed part is reported, not fatal to the others
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[{name}] {'ok' if results[name]['ok'] else 'FAILED: ' + results[name]['error']} "
              f"({results[name]['seconds']} s)", flush=True)
        return fn
    return wrap


def train_config(args, precision: str) -> dict:
    cfg = mt.load_config(ROOT / ("configs/debug.yaml" if args.dry_run else "configs/demo.yaml")).model_dump(
        mode="json", exclude_none=True)
    cfg["train"].update(device=args.device, precision=precision, progress=False)
    if args.dry_run:
        cfg["train"].update(steps=4, eval_every=None)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="every part at toy size (CI runs it on the CPU)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    ap.add_argument("--precisions", default=None, help="default: fp32,bf16,fp16 on a GPU, fp32 on the CPU")
    args = ap.parse_args()
    os.environ.setdefault("MANYTASK_GLUE_DIR", str(ROOT.parent / "shared" / "glue"))
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    gpu = args.device.startswith("cuda")
    precisions = (args.precisions or ("fp32,bf16,fp16" if gpu else "fp32")).split(",")
    device_name = torch.cuda.get_device_name(0) if gpu else (mt.cpu_info().get("model") or "cpu")
    work = Path(tempfile.mkdtemp(prefix="manytask-gpu-"))
    results: dict = {}

    @part("gpu_tests", results)
    def gpu_tests():
        if args.dry_run:
            return {"summary": "not run in a dry run (make test runs tests/test_gpu.py, skipped without a GPU)"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
        if proc.returncode not in (0, 5):
            raise RuntimeError(f"pytest -m gpu: {tail}")
        return {"summary": tail}

    runs = {}
    for precision in precisions:
        @part(f"train_{precision}", results)
        def train(precision=precision):
            out = work / f"demo-{precision}"
            run = mt.train(train_config(args, precision), out)
            res = run.results()
            runs[precision] = run
            return {"examples_per_s": res["examples_per_s"], "train_seconds": res["train_seconds"],
                    "dev_primary": res["final"]["primary"], "dev_average": res["final"]["average"],
                    "autocast": run.precision}

    for precision in precisions:
        @part(f"hf_ratio_{precision}", results)
        def hf_ratio(precision=precision):
            from hf_baseline import hf_examples_per_s

            n, bs, length = (64, 16, 32) if args.dry_run else (960, 32, 64)
            hf = hf_examples_per_s("sst2", n, bs, length, precision, grouped=True, device="cpu" if not gpu else "cuda")
            cfg = {"seed": 1, "tasks": [{"name": "sst2", "max_train": n, "max_eval": 32}],
                   "model": {"max_seq_length": length},
                   "train": {"batch_size": bs, "epochs": 1, "lr": 5e-5, "precision": precision, "device": args.device,
                             "progress": False}}
            ours = mt.train(cfg, work / f"single-{precision}").results()["examples_per_s"]
            return {"hf_trainer_grouped_examples_per_s": hf, "manytask_examples_per_s": ours, "ratio": ours / hf}

    @part("resume_on_cpu", results)
    def resume_on_cpu():
        cfg = train_config(args, precisions[-1])
        cfg["train"].update(steps=8, eval_every=None)
        out = work / "cut"
        mt.train(cfg, out, stop_at=4)
        cpu = {**cfg, "train": {**cfg["train"], "device": "cpu", "precision": "fp32"}}
        done = mt.train(cpu, out, resume=True)
        scores = done.scores()
        return {"trained_on": args.device, "precision": precisions[-1], "resumed_on": "cpu",
                "steps": done.results()["total_steps"], "dev_average_on_cpu": scores.average}

    @part("serve", results)
    def serve():
        base = runs.get("fp32") or next(iter(runs.values()))
        bundle = base.model().to_bundle(work / "bundle")
        tasks = bundle.task_names()
        single = [t for t in tasks if not bundle.model().specs[t].pair]
        texts = ["A gem of a film, warm and funny.", "The plot makes no sense.", "Dull and slow."] * 11
        out = {}
        for precision in [p for p in precisions if p in ("fp32", "bf16")]:
            merged = mt.Bundle(bundle.root).model(device=args.device, precision=precision)
            separate = {t: mt.Bundle(bundle.root).model([t], device=args.device, precision=precision) for t in single}
            rates = {"merged": [], "separate": []}
            for _ in range(1 if args.dry_run else 5):
                for name in ("merged", "separate"):
                    start = time.perf_counter()
                    for _ in range(1 if args.dry_run else 10):
                        if name == "merged":
                            merged.predict(texts, tasks=single)
                        else:
                            for t in single:
                                separate[t].predict(texts, task=t)
                    if gpu:
                        torch.cuda.synchronize()
                    rates[name].append(len(texts) * len(single) * (1 if args.dry_run else 10) /
                                       (time.perf_counter() - start))
            from fastapi.testclient import TestClient

            with TestClient(mt.app(bundle.root, device=args.device, precision=precision)) as c:
                http = c.post("/v1/predict", json={"inputs": [{"text": texts[0]}], "tasks": single}).status_code
            out[precision] = {"merged_task_predictions_per_s": statistics.median(rates["merged"]),
                              "separate_task_predictions_per_s": statistics.median(rates["separate"]),
                              "ratio": statistics.median(rates["merged"]) / statistics.median(rates["separate"]),
                              "http_status": http}
        return {"tasks": single, "by_precision": out}

    @part("autocast_dtypes", results)
    def autocast_dtypes():
        seen = {}
        for precision, run in runs.items():
            model = run.model_for(None, "last")
            dtypes = []
            hook = model.adapter.layers[0].register_forward_hook(lambda m, i, o: dtypes.append(str(o.dtype)))
            run.evaluate(write=False)
            run.write_targets(work / f"targets-{precision}", "last")
            hook.remove()
            want = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}[run.precision]
            if not dtypes or any(d != want for d in dtypes):
                raise AssertionError(f"{precision}: layers ran in {sorted(set(dtypes))}, expected {want}")
            seen[precision] = {"run_precision": run.precision, "layer_output_dtypes": sorted(set(dtypes))}
        return seen

    summary = {"device": args.device, "device_name": device_name, "dry_run": args.dry_run, "torch": torch.__version__,
               "cuda": torch.version.cuda, "precisions": precisions, "cpu": mt.cpu_info(), "parts": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\n{device_name} ({args.device}){' dry run' if args.dry_run else ''}")
    print("| part | ok | seconds | result |\n|---|---|---|---|")
    for name, r in results.items():
        shown = {k: v for k, v in r.items() if k not in ("ok", "seconds", "trace")}
        print(f"| {name} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {json.dumps(shown, default=str)[:160]} |")
    print(f"wrote {args.out / 'gpu.json'}")
    sys.exit(0 if all(r["ok"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
