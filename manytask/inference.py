"""Answer raw text with a multi-task model: tokenise a batch, run the tasks asked for, and turn each task's
logits into ``Prediction``s with its kind. The Python API (``Model.predict``), ``manytask ask`` and the server
all answer through ``answer_batch``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from manytask.data.features import encode_words, segment_ids
from manytask.errors import ManytaskError, UnknownTask
from manytask.kinds import kind_of
from manytask.models.multitask import MultiTaskModel
from manytask.models.precision import apply_precision, autocast_precision, check
from manytask.records import Features, Prediction
from manytask.runtime import autocast, resolve_device
from manytask.tasks import TaskSpec


class InputError(ManytaskError, ValueError):
    """Inputs a model cannot take (no task reads them, a pair for a single-text task ...)."""


def tokenize(tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]], max_length: int) -> dict:
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length,
                    padding=True, return_tensors="pt", return_token_type_ids=segment_ids(tokenizer))
    types = enc["token_type_ids"] if "token_type_ids" in enc else torch.zeros_like(enc["input_ids"])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_type_ids": types}


def tokenize_words(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """Raw texts split on whitespace into words, as word-level data is given; each word's first piece is kept
    (``first_piece``, -1 for a word beyond the length limit). For BERT's tokenizer the token ids are the
    same as tokenising the raw text, so sentence tasks asked in the same request read the same input."""
    words = [t.split() for t in texts]
    enc, firsts = encode_words(words, tokenizer, max_length)
    padded = tokenizer.pad({"input_ids": enc["input_ids"]}, return_tensors="pt")
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
            "token_type_ids": torch.zeros_like(padded["input_ids"]), "words": words, "first_piece": firsts}


@torch.inference_mode()
def answer_batch(net: MultiTaskModel, specs: dict[str, TaskSpec], tokenizer, max_length: int, device: torch.device,
                 precision: str, texts: Sequence[str], pairs: Optional[Sequence[str]], tasks: list[str],
                 rows: Optional[dict[str, list[int]]] = None) -> list[dict[str, Prediction]]:
    """Per input, the predictions of the tasks it asked for: every task in ``tasks``, or (``rows``) the tasks
    whose row list holds it — one forward pass for a batch whose requests asked different tasks."""
    word_level = pairs is None and any(kind_of(specs[t]).word_level for t in tasks)
    batch = tokenize_words(tokenizer, texts, max_length) if word_level else tokenize(tokenizer, texts, pairs, max_length)
    rows = rows if rows is not None else {t: list(range(len(texts))) for t in tasks}
    tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    index = {t: torch.tensor(r, dtype=torch.long, device=device) for t, r in rows.items()}
    with autocast(precision, device.type):
        out = net(tensors["input_ids"], tensors["attention_mask"], tensors["token_type_ids"], tasks=tasks, rows=index)
    answers: list[dict[str, Prediction]] = [{} for _ in texts]
    for t in tasks:
        spec, kind, r = specs[t], kind_of(specs[t]), rows[t]
        logits = list(out[t].logits.float().cpu())
        firsts = [batch["first_piece"][i] for i in r] if "first_piece" in batch else None
        preds = kind.decode(spec, logits, Features([""] * len(r), [], [], None, firsts))
        for j, i in enumerate(r):
            answers[i][t] = kind.answer(spec, preds, j, batch["words"][i] if "words" in batch else None)
    return answers


Inputs = Sequence[Union[str, tuple[str, str]]]


class Model:
    """A trained multi-task model, ready to answer: ``predict(["text"], task="sst2")``.

    The public API's ``Model`` (``manytask.Model``) adds writing it as a bundle."""

    def __init__(self, net: MultiTaskModel, tokenizer, max_length: int, device: str = "cpu", precision: str = "fp32",
                 plan: Optional[list[str]] = None):
        """``precision``: fp32, bf16 (autocast, where native), int8 or int8-channel (the linear layers of the trunk
        and the branches quantised once, here: ``net`` is changed in place), or auto with ``plan`` (the units a
        precision plan makes int8)."""
        self.device = resolve_device(device)
        check(precision, self.device)
        self.net = net.to(self.device).eval()
        apply_precision(self.net, precision, plan)
        self.weights, self.precision = precision, autocast_precision(precision)
        self.tokenizer, self.max_length = tokenizer, max_length

    @property
    def tasks(self) -> list[str]:
        return list(self.net.specs)

    @property
    def specs(self) -> dict[str, TaskSpec]:
        return dict(self.net.specs)

    def tasks_for(self, pairs: bool) -> list[str]:
        """The tasks that read text pairs (``pairs``) or single texts."""
        return sorted(n for n, s in self.net.specs.items() if s.pair == pairs)

    def predict(self, inputs: Inputs, task: Optional[str] = None, tasks: Optional[list[str]] = None
                ) -> Union[list[Prediction], list[dict[str, Prediction]]]:
        """Texts (or ``(text, text_pair)`` tuples) -> with ``task``, one ``Prediction`` per input; else, per input,
        a dict of every task named in ``tasks`` (default: every task that reads such inputs) to its prediction."""
        if isinstance(inputs, (str, tuple)):
            raise InputError("predict takes a list of inputs: predict([\"a text\"]) or predict([(\"a\", \"b\")])")
        items = list(inputs)
        if not items:
            return []
        pair = [isinstance(x, (tuple, list)) for x in items]
        if any(pair) and not all(pair):
            raise InputError("inputs mix single texts and (text, text_pair) pairs: predict them separately")
        if all(pair) and any(len(x) != 2 for x in items):
            raise InputError("a pair input is a (text, text_pair) tuple of two texts")
        texts = [x[0] if pair[0] else x for x in items]
        pairs = [x[1] for x in items] if pair[0] else None
        names = [task] if task is not None else (tasks or self.tasks_for(pair[0]))
        specs = self.net.specs
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise UnknownTask(f"unknown task(s) {unknown} (the model has {', '.join(sorted(specs))})")
        if not names:
            raise InputError(f"no task of this model reads {'text pairs' if pair[0] else 'single texts'}")
        wrong = [n for n in names if specs[n].pair != pair[0]]
        if wrong:
            raise InputError(f"task(s) {', '.join(wrong)} read {'text pairs' if not pair[0] else 'single texts'}")
        answers = answer_batch(self.net, specs, self.tokenizer, self.max_length, self.device, self.precision,
                               texts, pairs, names)
        return [a[task] for a in answers] if task is not None else answers
