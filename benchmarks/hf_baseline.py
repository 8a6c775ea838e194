"""The Hugging Face ``Trainer`` on a task's data, as a user who cares about speed sets it up: the same encoder,
data, batch size, length cap and learning rate as manytask's run, dynamic padding, and (``grouped``) the
Trainer's own length grouping (``train_sampling_strategy="group_by_length"``). Returns examples per second."""

from __future__ import annotations

import tempfile
import time

import manytask as mt


def hf_examples_per_s(task: str, examples: int, batch_size: int, max_len: int, precision: str, grouped: bool,
                      device: str = "cpu", epochs: float = 1.0) -> float:
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    data = mt.task_data({"tasks": [{"name": task, "max_train": examples, "max_eval": 32}]})[task]
    path = mt.encoder_path("default")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=data.spec.num_outputs)
    pair = data.spec.pair
    rows = [dict(tok(e.text_a, e.text_b if pair else None, truncation=True, max_length=max_len), labels=int(e.label))
            for e in data.train]
    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(output_dir=d, per_device_train_batch_size=batch_size, num_train_epochs=epochs,
                                 learning_rate=5e-5, save_strategy="no", report_to=[], logging_strategy="no",
                                 bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
                                 seed=1, disable_tqdm=True, dataloader_num_workers=0,
                                 train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok))
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return len(rows) * epochs / seconds
