"""Tagging: a tag per word of pre-split text (CoNLL or JSONL files), read off each word's first word piece.

Entity-level precision, recall and F1 (seqeval) for IOB1, BIO, BIOES and BILOU tag sets, with F1 per entity
type, and token accuracy. A word the model never saw — cut off by the length limit, or left without a word
piece by the tokenizer — is scored as wrong: its predicted tag is ``None``, which never equals the gold tag in
token accuracy, and counts as ``O`` (nothing found) for the entity scores.
"""

from __future__ import annotations

import json
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from manytask.kinds import register_kind
from manytask.kinds.base import LabelError, TaskKind, check_metrics
from manytask.records import IGNORE, Prediction, Predictions

log = logging.getLogger(__name__)
ENTITY_METRICS = ("entity_f1", "entity_precision", "entity_recall")


def scheme(labels: Sequence[str]) -> Optional[str]:
    """``BIO`` (also IOB1: seqeval's default chunking reads both alike), ``BIOES`` or ``BILOU`` when every tag
    is ``O`` or a prefixed entity tag; None for plain tags (entity scores do not apply)."""
    prefixes = {t.split("-", 1)[0] for t in labels if t != "O"}
    if not prefixes or any("-" not in t for t in labels if t != "O"):
        return None
    if prefixes <= {"B", "I"}:
        return "BIO"
    if prefixes <= {"B", "I", "E", "S"}:
        return "BIOES"
    if prefixes <= {"B", "I", "L", "U"}:
        return "BILOU"
    return None


def default_metrics(labels: Sequence[str]) -> list[str]:
    return [*ENTITY_METRICS, "token_accuracy"] if scheme(labels) else ["token_accuracy"]


def tagging_metrics(gold: list[list[str]], pred: list[list[Optional[str]]], names: Sequence[str],
                    labels: Sequence[str]) -> dict:
    """The requested scores, plus ``per_type`` F1 and the count of ``unscored_words`` (scored as wrong)."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tags differ in shape")
    words = sum(len(g) for g in gold)
    if words == 0:
        raise ValueError("no words to score")
    unscored = sum(p is None for row in pred for p in row)
    out: dict = {"words": words, "unscored_words": unscored}
    if "token_accuracy" in names:
        out["token_accuracy"] = sum(p == g for gr, pr in zip(gold, pred) for g, p in zip(gr, pr)) / words
    if any(n in ENTITY_METRICS for n in names):
        from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
        from seqeval.scheme import BILOU, IOBES

        kind = scheme(labels)
        if kind is None:
            raise ValueError(f"entity scores need BIO, BIOES or BILOU tags; this tag set is {list(labels)}")
        filled = [[p if p is not None else "O" for p in row] for row in pred]
        kw = {"BIOES": {"mode": "strict", "scheme": IOBES}, "BILOU": {"mode": "strict", "scheme": BILOU}}.get(kind, {})
        out["entity_f1"] = float(f1_score(gold, filled, zero_division=0, **kw))
        out["entity_precision"] = float(precision_score(gold, filled, zero_division=0, **kw))
        out["entity_recall"] = float(recall_score(gold, filled, zero_division=0, **kw))
        report = classification_report(gold, filled, output_dict=True, zero_division=0, **kw)
        out["per_type"] = {t: float(v["f1-score"]) for t, v in report.items() if not t.endswith(" avg")}
    return out


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the labelled tokens of [batch, tokens, labels] logits (IGNORE elsewhere)."""
    logits, labels = logits.float(), labels.long().reshape(-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=IGNORE, reduction="sum")


def token_count(labels: torch.Tensor) -> int:
    return int((labels != IGNORE).sum())


@register_kind
class Tagging(TaskKind):
    name = "tagging"
    metric_names = (*ENTITY_METRICS, "token_accuracy")
    word_level = True
    distillable = False
    sliceable = False  # slices of a tagging task are scored, not trained (no per-sentence loss)
    ensemblable = False
    default_fields = (["tokens"], "tags")  # JSONL lines {"tokens": [...], "tags": [...]} unless said otherwise

    def validate(self, spec) -> None:
        if len(spec.text_fields) != 1:
            raise ValueError(f"task {spec.name!r}: a tagging task reads its words from one field (text_fields)")
        if spec.labels is not None and (not spec.labels or len(set(spec.labels)) != len(spec.labels)):
            raise ValueError(f"task {spec.name!r}: 'labels' (the tag set) must be distinct tags")
        check_metrics(self, spec)

    def default_metrics(self, spec) -> list[str]:
        return default_metrics(spec.labels) if spec.labels is not None else []  # chosen once the tag set is known

    def num_outputs(self, spec) -> int:
        if spec.labels is None:
            raise ValueError(f"task {spec.name!r}: the tag set is not known yet (declare 'labels' or read the "
                             "training file first)")
        return len(spec.labels)

    def parse_label(self, spec, raw) -> list[int]:
        """Tag strings -> indices of the tag set; ``LabelError.position`` is the word at fault."""
        index = {t: i for i, t in enumerate(spec.labels or [])}
        out = []
        for i, t in enumerate(raw):
            if t not in index:
                err = LabelError(f"tag {t!r} is not in the task's tag set {spec.labels}")
                err.position = i  # type: ignore[attr-defined]
                raise err
            out.append(index[t])
        return out

    def target(self, spec, label) -> list[int]:
        """Per word its tag index (the features put it on the word's first piece)."""
        return list(label)

    def infer_labels(self, tags: Sequence[Sequence[str]]) -> list[str]:
        """The tag set of training examples (their tags as written): ``O`` first (where present), then sorted."""
        found = {t for row in tags for t in row}
        return (["O"] if "O" in found else []) + sorted(found - {"O"})

    def loss(self, logits, targets) -> torch.Tensor:
        return token_loss(logits, targets)

    def count(self, targets) -> int:
        return token_count(targets)

    def decode(self, spec, logits, feats) -> Predictions:
        tags, probs = [], []
        for row, first in zip(logits, feats.first_piece):
            best_p, best = torch.softmax(row, dim=-1).max(dim=-1)
            tags.append([int(best[pos]) if pos >= 0 else None for pos in first])
            probs.append([float(best_p[pos]) if pos >= 0 else None for pos in first])
        return Predictions(feats.ids, tags, probs)

    def answer(self, spec, preds, i, words=None) -> Prediction:
        return Prediction(spec.name, tokens=list(words or []), tags=[_tag(spec, v) for v in preds.values[i]],
                          probs=list(preds.probs[i]))

    def cell(self, spec, pred: Prediction) -> str:
        return " ".join(t or "_" for t in pred.tags or [])

    def prediction_file(self, spec, keys, preds, jsonl: bool) -> str:
        """JSONL (tokens, tags, and each chosen tag's probability), or CoNLL (word TAB tag). A word beyond the
        length limit has no prediction: null in JSONL, ``_`` in CoNLL."""
        if jsonl:
            return "\n".join(json.dumps({"id": k, "tokens": p.tokens, "tags": p.tags,
                                         "probabilities": [None if x is None else round(x, 6) for x in p.probs]})
                             for k, p in zip(keys, preds)) + "\n"
        return "\n\n".join("\n".join(f"{w}\t{t or '_'}" for w, t in zip(p.tokens, p.tags)) for p in preds) + "\n"

    def score(self, spec, preds, feats, title: str = "") -> dict:
        labels = spec.labels or []
        gold = [[labels[t] for t in row] for row in feats.word_labels]
        pred = [[labels[t] if t is not None else None for t in row] for row in preds.values]
        result = tagging_metrics(gold, pred, spec.metrics, labels)
        if result["unscored_words"]:
            log.warning("%s: %d of %d words lie beyond the length limit or have no word piece: scored as wrong",
                        title or spec.title, result["unscored_words"], result["words"])
        return {**result, "collapsed": False, "n": len(gold)}

    @classmethod
    def example(cls) -> dict:
        words = [["anna", "went", "to", "paris"], ["bob", "smith", "saw", "rome"], ["the", "city"],
                 ["carl", "and", "anna"], ["oslo", "and", "rome"], ["bob", "went"]]
        tags = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"],
                ["B-PER", "O", "B-PER"], ["B-LOC", "O", "B-LOC"], ["B-PER", "O"]]
        return {"spec": {"labels": ["O", "B-LOC", "B-PER", "I-PER"]}, "raw": tags, "words": words, "bad": ["B-MISC"]}


def _tag(spec, value) -> Optional[str]:
    return None if value is None else spec.labels[value]
