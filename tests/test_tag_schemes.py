"""Entity scores for every tag scheme a tagging file may use: IOB1 (CoNLL-2003 as distributed), BIO, BIOES and
BILOU, each against seqeval's own numbers; IOB1 scores the same entities as its BIO conversion."""

from __future__ import annotations

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import BILOU, IOBES

from manytask.kinds.tagging import scheme, tagging_metrics

NAMES = ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"]

# two sentences, gold and predicted, in BIO (IOB2)
GOLD_BIO = [["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG", "O"]]
PRED_BIO = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["O", "B-ORG", "I-ORG", "O", "O"]]


def to_iob1(rows):
    """IOB1: I- everywhere, B- only where an entity directly follows another of the same type."""
    out = []
    for row in rows:
        new, prev = [], "O"
        for t in row:
            if t.startswith("B-") and not (prev != "O" and prev[2:] == t[2:]):
                t = "I-" + t[2:]
            new.append(t)
            prev = t
        out.append(new)
    return out


def to_bioes(rows, single="S", end="E"):
    out = []
    for row in rows:
        new = []
        for i, t in enumerate(row):
            nxt = row[i + 1] if i + 1 < len(row) else "O"
            cont = nxt.startswith("I-") and nxt[2:] == t[2:]
            if t.startswith("B-"):
                new.append(t if cont else f"{single}-{t[2:]}")
            elif t.startswith("I-"):
                new.append(t if cont else f"{end}-{t[2:]}")
            else:
                new.append(t)
        out.append(new)
    return out


def labels_of(*rows):
    return sorted({t for r in rows for row in r for t in row})


def test_iob1_scores_the_entities_of_its_bio_conversion():
    gold, pred = to_iob1(GOLD_BIO), to_iob1(PRED_BIO)
    assert gold != GOLD_BIO  # the conversion changed tags
    assert scheme(labels_of(gold, pred)) == "BIO"
    iob1 = tagging_metrics(gold, pred, NAMES, labels_of(gold, pred))
    bio = tagging_metrics(GOLD_BIO, PRED_BIO, NAMES, labels_of(GOLD_BIO, PRED_BIO))
    for m in ("entity_f1", "entity_precision", "entity_recall"):
        assert iob1[m] == pytest.approx(bio[m])
    # by hand: gold PER, LOC, LOC, ORG; predicted PER, LOC, ORG(2 words) -> 2 right of 3 predicted, of 4 gold
    assert bio["entity_precision"] == pytest.approx(2 / 3) and bio["entity_recall"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("name, single, end, mode", [("BIOES", "S", "E", IOBES), ("BILOU", "U", "L", BILOU)])
def test_strict_schemes_match_seqeval(name, single, end, mode):
    gold, pred = to_bioes(GOLD_BIO, single, end), to_bioes(PRED_BIO, single, end)
    labels = labels_of(gold, pred)
    assert scheme(labels) == name
    got = tagging_metrics(gold, pred, NAMES, labels)  # BILOU used to raise "Invalid token is found: L-PER"
    kw = {"mode": "strict", "scheme": mode}
    assert got["entity_f1"] == pytest.approx(f1_score(gold, pred, **kw))
    assert got["entity_precision"] == pytest.approx(precision_score(gold, pred, **kw))
    assert got["entity_recall"] == pytest.approx(recall_score(gold, pred, **kw))
    bio = tagging_metrics(GOLD_BIO, PRED_BIO, NAMES, labels_of(GOLD_BIO, PRED_BIO))
    assert got["entity_f1"] == pytest.approx(bio["entity_f1"])  # the same entities, written another way


def test_plain_tags_have_no_entity_scores():
    assert scheme(["NN", "VB", "DT"]) is None
    with pytest.raises(ValueError, match="BIO, BIOES or BILOU"):
        tagging_metrics([["NN"]], [["NN"]], ["entity_f1"], ["NN", "VB"])
