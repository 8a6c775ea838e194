"""manytask's trainer against the Hugging Face Trainer: same model, data, batch size and length cap.

Prints training examples/s for both and the ratio; writes JSON to benchmarks/results/.
    python benchmarks/train_throughput.py --task sst2 --examples 960 --batch-size 32 --max-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import manytask as mt


def run_manytask(args, precision: str) -> float:
    cfg = {
        "seed": 1,
        "tasks": [{"name": args.task, "max_train": args.examples, "max_eval": 32}],
        "model": {"max_seq_length": args.max_len},
        "train": {"batch_size": args.batch_size, "epochs": 1, "lr": 5e-5, "precision": precision, "progress": False,
                  "group_by_length": True},
    }
    with tempfile.TemporaryDirectory() as d:
        run = mt.train(cfg, Path(d) / "run")
        return run.results()["examples_per_s"]


def run_hf(args, precision: str) -> float:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    data = mt.task_data({"tasks": [{"name": args.task, "max_train": args.examples, "max_eval": 32}]})[args.task]
    path = mt.encoder_path("default")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=data.spec.num_outputs)
    pair = len(data.spec.text_fields) == 2
    rows = [dict(tok(e.text_a, e.text_b if pair else None, truncation=True, max_length=args.max_len), labels=int(e.label))
            for e in data.train]
    with tempfile.TemporaryDirectory() as d:
        targs = TrainingArguments(output_dir=d, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                                  learning_rate=5e-5, save_strategy="no", report_to=[], logging_strategy="no",
                                  bf16=precision == "bf16", use_cpu=True, seed=1, disable_tqdm=True,
                                  dataloader_num_workers=0)
        trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=DataCollatorWithPadding(tok))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return len(rows) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", default="sst2")
    p.add_argument("--examples", type=int, default=960)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args()
    os.environ.setdefault("MANYTASK_GLUE_DIR", "../shared/glue")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    rows = []
    for precision in args.precisions.split(","):
        hf = run_hf(args, precision)
        ours = run_manytask(args, precision)
        rows.append({"precision": precision, "hf_trainer_examples_per_s": hf, "manytask_examples_per_s": ours,
                     "ratio": ours / hf})
    print(f"\n{args.task}, {args.examples} train examples, batch {args.batch_size}, max_len {args.max_len}, "
          f"torch threads {torch.get_num_threads()}")
    print("| precision | HF Trainer ex/s | manytask ex/s | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['hf_trainer_examples_per_s']:.1f} | {r['manytask_examples_per_s']:.1f} | "
              f"{r['ratio']:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": platform.processor() or platform.machine(),
                               "cpu": mt.cpu_info(),
                               "cpus": os.cpu_count(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
