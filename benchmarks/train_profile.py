"""Where a manytask training step's time goes on this CPU: ``torch.profiler`` over a few steps of MiniLM on
SST-2 (after warm-up steps), split into matmuls, attention, the other forward/backward ops, the optimizer,
collation (on the prefetch thread, beside the step) and what no op accounts for (Python and framework overhead);
with the model's FLOPs per example (``torch.utils.flop_counter`` over a forward and backward pass) and the
achieved FLOP rate against the CPU's estimated peak (``manytask.machine.peak_flops`` says how it is read).

    .venv/bin/python benchmarks/train_profile.py            # on a quiet machine
    writes benchmarks/results/train_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import manytask as mt  # noqa: E402
from manytask.machine import peak_flops  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
             "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::scaled_dot_product_attention",
             "aten::softmax", "aten::_softmax", "aten::_softmax_backward_data"}
RANGES = ("manytask.forward", "manytask.backward", "manytask.optimizer", "manytask.collate")


def flops_per_example(args) -> tuple[float, float]:
    """FLOPs of one forward and backward pass of the task's model on a batch of its training examples, per
    example, and that batch's padded length."""
    from torch.utils.flop_counter import FlopCounterMode

    from manytask.data.features import encode, pad_inputs
    from manytask.encoders.loading import load_tokenizer
    from manytask.models.build import initial_model

    cfg = mt.load_config({"seed": 1, "tasks": [{"name": args.task, "max_train": args.batch_size, "max_eval": 8}],
                          "model": {"max_seq_length": args.max_len}})
    data = mt.task_data(cfg)[args.task]
    tok = load_tokenizer(cfg.model.encoder)
    model = initial_model(cfg, [data.spec])
    feats = encode(data.train, data.spec, tok, args.max_len)
    inputs = pad_inputs(feats, list(range(len(data.train))), tok.pad_token_id)
    with FlopCounterMode(display=False) as counter:
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=[args.task])
        out[args.task].logits.float().sum().backward()
    return counter.get_total_flops() / len(data.train), float(inputs["attention_mask"].shape[1])


def _category(name: str) -> str:
    if name in MATMUL:
        return "matmuls (linear layers, forward and backward)"
    if name in ATTENTION:
        return "attention (scaled dot product, softmax)"
    return "other forward/backward ops (layer norm, GELU, dropout, adds, embeddings, losses)"


def attribute(events, steps: int) -> dict[str, float]:
    """ms per step by part: each op's own time under the step range it ran in (forward, backward, optimizer);
    a range's own time (no op under it) is Python inside that range; ops outside every range (the autograd
    engine's threads, if any) are counted apart. Collation (another thread) is timed by ``main``."""
    parts = {"matmuls (linear layers, forward and backward)": 0.0, "attention (scaled dot product, softmax)": 0.0,
             "other forward/backward ops (layer norm, GELU, dropout, adds, embeddings, losses)": 0.0,
             "optimizer step (fused AdamW, gradient clipping, schedule)": 0.0,
             "Python inside the forward/backward ranges": 0.0,
             "ops outside the step's ranges": 0.0}
    for evt in events:
        own, where = evt.self_cpu_time_total / 1e3 / steps, None
        e = evt
        while e is not None and where is None:
            where = e.name if e.name in RANGES else None
            e = e.cpu_parent
        if where == "manytask.optimizer":
            parts["optimizer step (fused AdamW, gradient clipping, schedule)"] += own
        elif where is not None:
            key = "Python inside the forward/backward ranges" if evt.name in RANGES else _category(evt.name)
            parts[key] += own
        elif evt.name.startswith(("aten::", "autograd::")) and evt.cpu_parent is None:
            parts["ops outside the step's ranges"] += own
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/train_profile.json")
    args = p.parse_args()
    os.environ.setdefault("MANYTASK_GLUE_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    total = args.warmup_steps + args.steps
    prof = profile(activities=[ProfilerActivity.CPU],
                   schedule=schedule(wait=0, warmup=args.warmup_steps, active=args.steps, repeat=1))
    marks: dict[int, float] = {}

    def on_event(event, record):
        if event == "log":
            marks[record["step"]] = time.perf_counter()
            prof.step()

    from manytask.training import step as step_module

    collate_s: list[float] = []
    prepare = step_module.prepare

    def timed_prepare(*a, **k):  # collation runs on the prefetch thread, which the profiler does not follow
        start = time.perf_counter()
        try:
            return prepare(*a, **k)
        finally:
            collate_s.append(time.perf_counter() - start)
    step_module.prepare = timed_prepare
    cfg = {"seed": 1, "tasks": [{"name": args.task, "max_train": args.batch_size * total, "max_eval": 32}],
           "model": {"max_seq_length": args.max_len},
           "train": {"batch_size": args.batch_size, "steps": total, "log_every": 1, "progress": False,
                     "group_by_length": False}}
    with tempfile.TemporaryDirectory() as d, prof:
        mt.train(cfg, Path(d) / "run", callbacks=[on_event])
    wall = (marks[total] - marks[args.warmup_steps]) / args.steps  # seconds per profiled step
    parts = attribute(prof.events(), args.steps)
    parts["collation (prefetch thread, beside the step)"] = 1e3 * sorted(collate_s)[len(collate_s) // 2]
    step_ms = wall * 1e3
    in_ops = sum(v for k, v in parts.items() if k != "collation (prefetch thread, beside the step)")
    parts["Python and dispatch outside any op (the rest of the step)"] = max(step_ms - in_ops, 0.0)
    rows = list(parts.items())
    events = prof.key_averages()
    ms = {e.key: e.self_cpu_time_total / 1e3 / args.steps for e in events}
    inclusive = {e.key: e.cpu_time_total / 1e3 / args.steps for e in events}
    flops, length = flops_per_example(args)
    peak = peak_flops()
    achieved = flops * args.batch_size / wall
    info = mt.cpu_info()
    print(f"\n{args.task}, batch {args.batch_size}, length cap {args.max_len} (profiled batch padded to {length:.0f}), "
          f"{args.steps} profiled steps after {args.warmup_steps}, torch threads {torch.get_num_threads()}, "
          f"CPU {info.get('model')}")
    print(f"step: {step_ms:.0f} ms ({args.batch_size / wall:.1f} examples/s)")
    print("| part | ms per step | share of the step |\n|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} | {100 * v / step_ms:.0f}% |")
    print(f"\nFLOPs per example (forward + backward, at length {length:.0f}): {flops / 1e9:.2f} GFLOP")
    print(f"achieved: {achieved / 1e9:.1f} GFLOP/s; peak fp32 {peak.get('fp32', 0) / 1e9:.0f} GFLOP/s "
          f"({peak.get('how', 'unknown')}): {100 * achieved / peak['fp32']:.0f}% of peak" if peak else "")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpu": info, "torch": torch.__version__,
                               "step_ms": step_ms, "parts_ms": dict(rows), "ranges_ms": {r: inclusive.get(r, 0.0)
                                                                                           for r in RANGES},
                               "flops_per_example": flops, "padded_length": length, "achieved_flops": achieved,
                               "peak": peak,
                               "top_ops_ms": dict(sorted(ms.items(), key=lambda kv: -kv[1])[:15])}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
