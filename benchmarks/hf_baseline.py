"""The Hugging Face ``Trainer`` on a task's data, as a user who cares about speed sets it up: the same encoder,
data, batch size, length cap, learning rate, warm-up, weight decay and clipping as a manytask run, dynamic
padding, and (``grouped``) the Trainer's own length grouping (``train_sampling_strategy="group_by_length"``).
Used by ``train_throughput.py`` and ``gpu/check.py``."""

from __future__ import annotations

import tempfile
import time

import numpy as np

import manytask as mt


def hf_run(task: str, examples: int, batch_size: int, max_len: int, precision: str, grouped: bool,
           device: str = "cpu", epochs: float = 1.0, lr: float = 5e-5, seed: int = 1, eval_examples: int = 0) -> dict:
    """Train; return examples/s (timed from ``train()`` to its end, synchronised on a GPU) and, with
    ``eval_examples``, the accuracy on that many dev examples afterwards (not timed)."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    data = mt.task_data({"tasks": [{"name": task, "max_train": examples, "max_eval": eval_examples or 32}]})[task]
    path = mt.encoder_path("default")
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=data.spec.num_outputs)
    pair = data.spec.pair

    def rows(items):
        return [dict(tok(e.text_a, e.text_b if pair else None, truncation=True, max_length=max_len),
                     labels=int(e.label)) for e in items]
    train = rows(data.train)
    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(output_dir=d, per_device_train_batch_size=batch_size, num_train_epochs=epochs,
                                 learning_rate=lr, weight_decay=0.01, warmup_steps=0.1, max_grad_norm=1.0,
                                 save_strategy="no", report_to=[], logging_strategy="no",
                                 bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
                                 seed=seed, disable_tqdm=True, dataloader_num_workers=0, per_device_eval_batch_size=128,
                                 train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out = {"examples_per_s": len(train) * epochs / seconds, "seconds": seconds}
        if eval_examples:
            pred = trainer.predict(rows(next(iter(data.evals.values()))))
            out["dev_accuracy"] = float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())
    return out


def hf_examples_per_s(task: str, examples: int, batch_size: int, max_len: int, precision: str, grouped: bool,
                      device: str = "cpu", epochs: float = 1.0) -> float:
    return hf_run(task, examples, batch_size, max_len, precision, grouped, device, epochs)["examples_per_s"]
