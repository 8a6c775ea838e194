"""Scores of a token-tagging task: entity-level precision, recall and F1 (seqeval) for BIO and BIOES tag
sets, with F1 per entity type, and token accuracy.

A word the model never saw — cut off by the length limit, or left without a word piece by the tokenizer —
is scored as wrong: its predicted tag is ``None``, which never equals the gold tag in token accuracy, and
counts as ``O`` (nothing found) for the entity scores.
"""

from __future__ import annotations

from typing import Optional, Sequence

ENTITY_METRICS = ["entity_f1", "entity_precision", "entity_recall"]


def scheme(labels: Sequence[str]) -> Optional[str]:
    """``BIOES`` or ``BIO`` when every tag is ``O`` or a prefixed entity tag, else None (plain tags)."""
    prefixes = {t.split("-", 1)[0] for t in labels if t != "O"}
    if not prefixes or any("-" not in t for t in labels if t != "O"):
        return None
    if prefixes <= {"B", "I"}:
        return "BIO"
    if prefixes <= {"B", "I", "E", "S", "L", "U"}:
        return "BIOES"
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
        from seqeval.scheme import IOBES

        kind = scheme(labels)
        if kind is None:
            raise ValueError(f"entity scores need BIO or BIOES tags; this tag set is {list(labels)}")
        filled = [[p if p is not None else "O" for p in row] for row in pred]
        kw = {"mode": "strict", "scheme": IOBES} if kind == "BIOES" else {}
        out["entity_f1"] = float(f1_score(gold, filled, zero_division=0, **kw))
        out["entity_precision"] = float(precision_score(gold, filled, zero_division=0, **kw))
        out["entity_recall"] = float(recall_score(gold, filled, zero_division=0, **kw))
        report = classification_report(gold, filled, output_dict=True, zero_division=0, **kw)
        out["per_type"] = {t: float(v["f1-score"]) for t, v in report.items() if not t.endswith(" avg")}
    return out
