"""manytask's trainer against the Hugging Face ``Trainer`` as shipped and as a user who cares about speed sets it
(its own length grouping, ``train_sampling_strategy="group_by_length"``), fp32 and bf16 where the CPU has it
natively; manytask with and without ``train.compile``. Same encoder, data, batch size, length cap, learning
rate, warm-up, weight decay and clipping; every configuration once per round, the order rotated each round,
all in this one process; medians with ranges, and each run's dev accuracy (the same seed's score).

    .venv/bin/python benchmarks/train_throughput.py --rounds 3        # on a quiet machine; prints the table
    writes benchmarks/results/train_throughput.json (every run, the medians, the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import manytask as mt  # noqa: E402
from hf_baseline import hf_run  # noqa: E402
from manytask.runtime import cpu_has_native_bf16  # noqa: E402


def hf(args, precision: str, grouped: bool) -> dict:
    return hf_run(args.task, args.examples, args.batch_size, args.max_len, precision, grouped, lr=args.lr,
                  seed=args.seed, eval_examples=args.eval)


def _config(args, **train) -> dict:
    return {"seed": args.seed, "tasks": [{"name": args.task, "max_train": args.examples, "max_eval": args.eval}],
            "model": {"max_seq_length": args.max_len},
            "train": {"batch_size": args.batch_size, "epochs": 1, "lr": args.lr, "progress": False, "log_every": 1,
                      **train}}


def manytask_run(args, precision: str, compile_: bool) -> dict:
    """A manytask run; ``steady``: examples/s after the first two steps (where torch.compile does its work)."""
    with tempfile.TemporaryDirectory() as d:
        run = mt.train(_config(args, precision=precision, compile=compile_), Path(d) / "run")
        results = run.results()
        logs = [json.loads(line) for line in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    logs = [e for e in logs if e["event"] == "log"]
    seen = [(e["step"], e["examples_per_s"]) for e in logs]
    per_step = args.batch_size
    # cumulative seconds at each logged step: examples so far / examples per second so far
    t = {s: min(s * per_step, results["train_examples"]) / eps for s, eps in seen}
    first, last = 2, max(t)
    if last <= first:
        raise SystemExit("train_throughput: give --examples for more than two steps")
    steady = (min(last * per_step, results["train_examples"]) - first * per_step) / (t[last] - t[first])
    return {"examples_per_s": results["examples_per_s"], "seconds": results["train_seconds"],
            "steady_examples_per_s": steady, "first_two_steps_s": t[first],
            "dev_accuracy": results["final"]["primary"][args.task]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--examples", type=int, default=640)
    p.add_argument("--eval", type=int, default=872)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args()
    os.environ.setdefault("MANYTASK_GLUE_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    import transformers

    transformers.utils.logging.set_verbosity_error()
    configs = {
        "HF Trainer, as shipped (random sampler)": lambda: hf(args, "fp32", grouped=False),
        "HF Trainer + group_by_length": lambda: hf(args, "fp32", grouped=True),
        "manytask": lambda: manytask_run(args, "fp32", False),
        "manytask + train.compile": lambda: manytask_run(args, "fp32", True),
    }
    if cpu_has_native_bf16():
        configs["HF Trainer + group_by_length, bf16"] = lambda: hf(args, "bf16", grouped=True)
        configs["manytask, bf16"] = lambda: manytask_run(args, "bf16", False)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    names = list(configs)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotated: no configuration always goes first
        for name in order:
            result = configs[name]()
            runs[name].append(result)
            print(f"round {r + 1}: {name}: {result['examples_per_s']:.1f} ex/s, dev {100 * result['dev_accuracy']:.1f}",
                  flush=True)

    def med(name, key):
        return statistics.median(x[key] for x in runs[name])

    def span(name, key):
        return min(x[key] for x in runs[name]), max(x[key] for x in runs[name])

    tuned = {"fp32": "HF Trainer + group_by_length", "bf16": "HF Trainer + group_by_length, bf16"}
    rows = []
    for name in names:
        precision = "bf16" if "bf16" in name else "fp32"
        base = tuned[precision] if tuned[precision] in runs else None
        row = {"config": name, "precision": precision, "median_examples_per_s": med(name, "examples_per_s"),
               "range": span(name, "examples_per_s"), "median_dev_accuracy": med(name, "dev_accuracy"),
               "dev_accuracy_range": span(name, "dev_accuracy"), "runs": runs[name]}
        if base and base != name:
            row["ratio_to_tuned_trainer"] = row["median_examples_per_s"] / med(base, "examples_per_s")
        if "steady_examples_per_s" in runs[name][0]:
            row["median_steady_examples_per_s"] = med(name, "steady_examples_per_s")
        rows.append(row)
    info = mt.cpu_info()
    print(f"\n{args.task}, {args.examples} training examples, batch {args.batch_size}, length cap {args.max_len}, "
          f"{args.rounds} rounds (order rotated), torch threads {torch.get_num_threads()}, CPU {info.get('model')} "
          f"({info.get('cores')} cores; {', '.join(info.get('flags', []))})")
    print("| configuration | ex/s median (range) | ÷ tuned Trainer | after 2 steps ex/s | dev acc. median (range) |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_to_tuned_trainer']:.2f}×" if "ratio_to_tuned_trainer" in r else "—"
        steady = f"{r['median_steady_examples_per_s']:.1f}" if "median_steady_examples_per_s" in r else "—"
        print(f"| {r['config']} | {r['median_examples_per_s']:.1f} ({r['range'][0]:.1f}–{r['range'][1]:.1f}) | {ratio} | "
              f"{steady} | {100 * r['median_dev_accuracy']:.1f} ({100 * r['dev_accuracy_range'][0]:.1f}–"
              f"{100 * r['dev_accuracy_range'][1]:.1f}) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpu": info, "torch": torch.__version__,
                               "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
