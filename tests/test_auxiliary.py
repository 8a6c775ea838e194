"""Auxiliary token supervision (MeTaL): silver labels from a tagger over a task's own text, cached by example
id and tagger version, aligned by character offsets, learnt by training-only heads on the task's batches."""

from __future__ import annotations

import json
import re

import pytest

from manytask.config import AuxiliarySpec, load_config
from manytask.data.silver import SilverError, align, load_tagger
from manytask.records import IGNORE
from manytask.runs import Run, train_run
from tests.silver_stub import CALLS


def test_spans_align_to_the_first_piece_of_each_tagger_token_and_misses_are_counted():
    offsets = [(0, 0), (0, 3), (3, 6), (7, 9), (0, 0)]  # [CLS] "unb" "eli" "vs" [SEP]
    segment = [None, 0, 0, 0, None]
    labels, missed = align(offsets, segment, [[(0, 6, "A"), (7, 9, "B"), (10, 14, "A")]], {"A": 0, "B": 1}, IGNORE)
    assert labels == [IGNORE, 0, IGNORE, 1, IGNORE] and missed == 1  # "(10, 14)" lies beyond the input


def test_without_spacy_asking_for_it_names_the_install_command():
    try:
        import spacy  # noqa: F401  (only whether it imports)
        pytest.skip("spaCy is installed here")
    except ImportError:
        pass
    with pytest.raises(SilverError, match=re.escape("pip install -e '.[aux]'")):
        load_tagger(AuxiliarySpec(name="pos", tagger="spacy"))


@pytest.fixture
def aux_config(mini_glue, tiny_config, tmp_path):
    return {**tiny_config, "tasks": [{"name": "sst2", "max_train": 24, "auxiliary": [
        {"name": "caps", "tagger": "tests.silver_stub:caps_tagger", "weight": 0.5}]}, "mrpc"],
            "silver_cache": str(tmp_path / "cache"), "train": {**tiny_config["train"], "steps": 8, "eval_every": None}}


def test_auxiliary_labels_ride_on_the_task_and_are_cached(aux_config, tmp_path):
    CALLS["texts"] = 0
    train_run(load_config(data=aux_config), tmp_path / "a")
    assert CALLS["texts"] == 24  # the training texts, tagged once
    run = Run.open(tmp_path / "a")
    aux = run.cfg.tasks[0].auxiliary[0]
    assert aux.labels == ["LONG", "SHORT"]  # read from the silver labels and saved with the run
    log = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in log if e["event"] == "log"]
    assert any("sst2/caps" in e["loss"] for e in steps)  # the auxiliary loss rode on sst2's batches
    assert not any("mrpc/caps" in e["loss"] for e in steps)
    cache = json.loads((tmp_path / "cache" / "silver" / "sst2.caps.json").read_text())
    assert cache["tagger"] == "tests.silver_stub:caps_tagger" and cache["version"].startswith("source ")
    assert len(cache["spans"]) == 24 and all(k.startswith("sst2/train/") for k in cache["spans"])
    # a second run reads the cache: the tagger is not called again
    train_run(load_config(data=aux_config), tmp_path / "b")
    assert CALLS["texts"] == 24
    # the auxiliary head is training-only: a bundle package of the task carries none of it
    from manytask.bundles import package_from_run

    pkg = package_from_run(tmp_path / "a", "sst2", "last")
    assert pkg.tensors and not any("aux" in k or "caps" in k for k in pkg.tensors)
    assert Run.open(tmp_path / "a").evaluate()["primary"]["sst2"] >= 0.0  # the run reopens with its aux head


def test_a_cache_from_another_tagger_version_is_refused(aux_config, tmp_path):
    train_run(load_config(data=aux_config), tmp_path / "a")
    path = tmp_path / "cache" / "silver" / "sst2.caps.json"
    cache = json.loads(path.read_text())
    cache["version"] = "source 0000"
    path.write_text(json.dumps(cache))
    with pytest.raises(SilverError, match="made by .* not tests.silver_stub:caps_tagger"):
        train_run(load_config(data=aux_config), tmp_path / "b")


def test_the_pattern_tagger_gives_silver_pos_offline(mini_glue, tiny_config, tmp_path):
    pytest.importorskip("textblob")
    from manytask.data.silver import load_tagger

    tagger = load_tagger(AuxiliarySpec(name="pos", tagger="pattern"))
    spans = tagger.tag(["Anna flew to Paris."])[0]
    assert [(s, e, t) for s, e, t in spans] == [(0, 4, "NNP"), (5, 9, "VBD"), (10, 12, "TO"), (13, 18, "NNP"),
                                                 (18, 19, ".")]
    cfg = {**tiny_config, "tasks": [{"name": "sst2", "max_train": 16, "auxiliary": [
        {"name": "pos", "tagger": "pattern"}]}], "silver_cache": str(tmp_path / "cache"),
        "train": {**tiny_config["train"], "steps": 2, "eval_every": None}}
    train_run(load_config(data=cfg), tmp_path / "r")
    labels = Run.open(tmp_path / "r").cfg.tasks[0].auxiliary[0].labels
    assert labels == ["JJ"]  # mini GLUE's SST-2 words are all adjectives


def test_metal_alignment_labels_every_piece_and_special_tokens_null():
    offsets = [(0, 0), (0, 3), (3, 6), (7, 9), (0, 0)]  # [CLS] "unb" "eli" "vs" [SEP]
    segment = [None, 0, 0, 0, None]
    index = {"NULL": 0, "A": 1, "B": 2}
    labels, missed = align(offsets, segment, [[(0, 6, "A"), (7, 9, "B")]], index, IGNORE, pieces="all", special=0)
    assert labels == [0, 1, 1, 2, 0] and missed == 0  # both pieces of the first word; [CLS], [SEP] NULL
    first, _ = align(offsets, segment, [[(0, 6, "A"), (7, 9, "B")]], index, IGNORE)
    assert first == [IGNORE, 1, IGNORE, 2, IGNORE]  # the default: first pieces, special tokens left out


def test_silver_labels_are_recomputed_when_a_texts_changes_under_the_same_id(tmp_path):
    """The cache is keyed by id *and* text: a file edited in place keeps its line-number ids, and the old spans
    would misalign with the new text."""
    from manytask.data.silver import silver_spans
    from manytask.records import Example

    aux = AuxiliarySpec(name="caps", tagger="tests.silver_stub:caps_tagger")
    ex = [Example(f"t/train/{i}", t, None, 0, str(i)) for i, t in enumerate(["short words here", "tiny cat"])]
    CALLS["texts"] = 0
    first, _ = silver_spans("t", aux, [e.id for e in ex], [[e.text_a] for e in ex], tmp_path)
    assert CALLS["texts"] == 2
    silver_spans("t", aux, [e.id for e in ex], [[e.text_a] for e in ex], tmp_path)
    assert CALLS["texts"] == 2  # cached
    ex[1] = Example("t/train/1", "a completely different sentence", None, 0, "1")
    again, _ = silver_spans("t", aux, [e.id for e in ex], [[e.text_a] for e in ex], tmp_path)
    assert CALLS["texts"] == 3  # only the changed example is tagged again
    assert again["t/train/0"] == first["t/train/0"]
    assert [s[:2] for s in again["t/train/1"][0]] == [[0, 1], [2, 12], [13, 22], [23, 31]]
