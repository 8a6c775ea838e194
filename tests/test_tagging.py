"""Token-tagging tasks: CoNLL and JSONL files, word-piece alignment, entity scores, prediction, a bundle
and the server."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from manytask.cli import app
from manytask.config import TaskEntry, load_config
from manytask.data.features import encode
from manytask.data.readers import DataError, read_split
from manytask.encoders.loading import load_tokenizer
from manytask.kinds.tagging import tagging_metrics
from manytask.records import IGNORE
from manytask.runs import Run, train_run

runner = CliRunner()
PEOPLE, PLACES, OTHER = ["anna", "bob", "carl"], ["paris", "rome", "oslo"], ["went", "to", "saw", "the", "city", "and"]


def sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.randint(3, 7)):
        r = rng.random()
        if r < 0.25:
            words += [rng.choice(PEOPLE), "smith"]
            tags += ["B-PER", "I-PER"]
        elif r < 0.45:
            words.append(rng.choice(PLACES))
            tags.append("B-LOC")
        else:
            words.append(rng.choice(OTHER))
            tags.append("O")
    return words, tags


def write_conll(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    blocks = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        words, tags = sentence(rng)
        blocks.append("\n".join(f"{w} NN I-NP {t}" for w, t in zip(words, tags)) + "\n")
    path.write_text("\n".join(blocks))


def write_jsonl(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(dict(zip(("tokens", "tags"), sentence(rng)))) + "\n" for _ in range(n)))


def conll_task(tmp_path, **kw) -> dict:
    write_conll(tmp_path / "train.conll", 48, 0)
    write_conll(tmp_path / "dev.conll", 16, 1)
    return {"name": "ner", "kind": "tagging", "train": str(tmp_path / "train.conll"),
            "dev": str(tmp_path / "dev.conll"), "columns": ["token", "pos", "chunk", "ner"],
            "text_fields": ["token"], "label_field": "ner", **kw}


# ---- reading ------------------------------------------------------------------------------------------------
def test_conll_and_jsonl_read_the_same_sentences(tmp_path):
    write_conll(tmp_path / "a.conll", 5, 3)
    write_jsonl(tmp_path / "a.jsonl", 5, 3)
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    conll = TaskEntry(**conll_task(tmp_path, labels=labels, train=str(tmp_path / "a.conll"))).resolve(tmp_path)
    jsonl = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / "a.jsonl"), labels=labels).resolve(tmp_path)
    a, b = read_split(conll, "train", tmp_path), read_split(jsonl, "train", tmp_path)
    assert [e.words for e in a] == [e.words for e in b] and [e.label for e in a] == [e.label for e in b]
    assert a[0].key == "3"  # the -DOCSTART- line and the blank after it are skipped; named by its first line
    assert jsonl.metrics == ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"]


@pytest.mark.parametrize("text, message", [
    ('{"tokens": ["a", "b"], "tags": ["O"]}\n', r"line 1, field 'tags': 2 words but 1 tags"),
    ('{"tokens": [], "tags": []}\n', r"line 1, field 'tokens': empty sentence"),
    ('{"tokens": ["a"], "tags": ["B-XYZ"]}\n', r"line 1, field 'tags': tag 'B-XYZ' is not in the task's tag set"),
    ('{"tokens": "a b", "tags": ["O", "O"]}\n', r"line 1, field 'tokens': expected a list"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, text, message):
    (tmp_path / "bad.jsonl").write_text(text)
    spec = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / "bad.jsonl"),
                     labels=["O", "B-PER"]).resolve(tmp_path)
    with pytest.raises(DataError, match=message):
        read_split(spec, "train", tmp_path)


def test_bad_conll_names_the_line(tmp_path):
    (tmp_path / "bad.conll").write_text("a NN O\nb NN\n")
    spec = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / "bad.conll"), text_fields=[0],
                     label_field=2, labels=["O"]).resolve(tmp_path)
    with pytest.raises(DataError, match=r"bad\.conll, line 2: expected 3 columns"):
        read_split(spec, "train", tmp_path)
    (tmp_path / "tag.conll").write_text("a NN O\n\nb NN B-ORG\n")
    spec = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / "tag.conll"), text_fields=[0],
                     label_field=2, labels=["O"]).resolve(tmp_path)
    with pytest.raises(DataError, match=r"tag\.conll, line 3, field 2: tag 'B-ORG' is not in"):
        read_split(spec, "train", tmp_path)


# ---- word pieces ----------------------------------------------------------------------------------------------
def test_only_the_first_piece_of_a_word_carries_its_tag_and_cut_words_are_counted(tmp_path):
    tok = load_tokenizer("default")
    (tmp_path / "w.jsonl").write_text(json.dumps({"tokens": ["unbelievably", "paris", "smith"],
                                                  "tags": ["O", "B-LOC", "B-PER"]}) + "\n")
    spec = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / "w.jsonl"),
                     labels=["O", "B-LOC", "B-PER"]).resolve(tmp_path)
    ex = read_split(spec, "train", tmp_path)
    feats = encode(ex, spec, tok, max_length=64)
    pieces = tok.convert_ids_to_tokens(feats.input_ids[0])
    assert pieces[0] == "[CLS]" and len(tok.tokenize("unbelievably")) > 1  # a word of several pieces
    labelled = [(p, l) for p, l in zip(pieces, feats.labels[0]) if l != IGNORE]
    assert labelled == [(pieces[feats.first_piece[0][0]], 0), ("paris", 1), ("smith", 2)]
    assert feats.unseen_words == 0
    short = encode(ex, spec, tok, max_length=4)  # [CLS] + 2 pieces + [SEP]: the later words are cut off
    assert short.first_piece[0][1:] == [-1, -1] and short.unseen_words == 2


def test_entity_scores_by_hand_and_unseen_words_count_as_wrong():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", None], ["B-LOC", "B-PER"]]  # LOC of sentence 1 unseen; a false PER
    m = tagging_metrics(gold, pred, ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"],
                        ["O", "B-PER", "I-PER", "B-LOC"])
    assert m["entity_precision"] == pytest.approx(2 / 3) and m["entity_recall"] == pytest.approx(2 / 3)
    assert m["token_accuracy"] == pytest.approx(4 / 6) and m["unscored_words"] == 1
    assert m["per_type"] == pytest.approx({"PER": 2 / 3, "LOC": 2 / 3})


# ---- a run, predictions, a bundle, the server ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tagging_run(tmp_path_factory):
    from tests.conftest import TINY, write_mini_glue

    base = tmp_path_factory.mktemp("tag")
    glue = write_mini_glue(base / "glue")
    cfg = {"seed": 1, "glue_dir": str(glue), "tasks": [conll_task(base, branch_layers=1), {"name": "sst2", "branch_layers": 1}],
           "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 60, "lr": 3e-3, "progress": False, "batching": "mixed"}}
    out = base / "run"
    train_run(load_config(data=cfg), out)
    return base, out


def test_a_tagging_task_trains_beside_a_sentence_task_and_stores_its_tag_set(tagging_run):
    base, out = tagging_run
    run = Run.open(out)
    ner = next(t for t in run.cfg.tasks if t.name == "ner")
    assert ner.labels == ["O", "B-LOC", "B-PER", "I-PER"]  # read from the training file, saved with the run
    result = run.evaluate()
    m = result["tasks"]["ner"]["dev"]
    assert 0.0 <= m["entity_f1"] <= 1.0 and set(m["per_type"]) == {"LOC", "PER"}
    dev = [l.split()[-1] for l in (base / "dev.conll").read_text().splitlines() if l.strip() and "DOCSTART" not in l]
    majority = max(dev.count(t) for t in set(dev)) / len(dev)
    assert m["token_accuracy"] > majority + 0.1, (m, majority)  # easy synthetic tags: it learned more than "O"
    assert json.loads((out / "eval.json").read_text())["tasks"]["ner"]["dev"]["per_type"].keys() == {"LOC", "PER"}


def test_predict_writes_tags_per_word(tagging_run, tmp_path):
    base, out = tagging_run
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"tokens": ["anna", "smith", "went", "to", "rome"]}) + "\n")
    res = runner.invoke(app, ["predict", str(out), "--task", "ner", "-i", str(inp), "-o", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["tokens"] == ["anna", "smith", "went", "to", "rome"] and len(row["tags"]) == 5
    assert all(t in ("O", "B-LOC", "B-PER", "I-PER") for t in row["tags"])
    assert all(0.0 < p <= 1.0 for p in row["probabilities"])


def test_a_tagging_task_goes_into_a_bundle_and_is_served(tagging_run, tmp_path):
    from manytask.bundles import Bundle, package_from_run
    from manytask.serving.app import create_app
    from manytask.serving.predictor import MergedPredictor

    base, out = tagging_run
    run = Run.open(out)
    model = run.model_for()
    bundle = Bundle.create(tmp_path / "bundle", model.share([]), run.tokenizer(), run.cfg.model.max_seq_length)
    for task in ("ner", "sst2"):
        bundle.put(package_from_run(out, task, "last"))
    text = "bob smith saw the city"
    with TestClient(create_app(MergedPredictor(bundle))) as c:
        res = c.post("/v1/predict", json={"inputs": [{"text": text}], "tasks": ["ner", "sst2"]})
        assert res.status_code == 200, res.text
        got = res.json()["results"][0]
        assert got["ner"]["tokens"] == text.split() and len(got["ner"]["tags"]) == 5
        assert got["sst2"]["label"] in ("0", "1")
    # the same tags as the run's own model on the same words
    from manytask.data.readers import Example
    from manytask.evaluation.scoring import predict

    spec = next(s for s in run.specs() if s.name == "ner")
    ex = [Example("x", text, None, None, "1", text.split())]
    own = predict(model, spec, encode(ex, spec, run.tokenizer(), 32), 8, run.tokenizer().pad_token_id)
    assert got["ner"]["tags"] == [spec.labels[v] for v in own.values[0]]
    sst2 = predict(model, next(s for s in run.specs() if s.name == "sst2"),
                   encode([Example("y", text, None, None, "1")], next(s for s in run.specs() if s.name == "sst2"),
                          run.tokenizer(), 32), 8, 0)
    assert got["sst2"]["probs"]["1"] == pytest.approx(float(sst2.probs[0][1]), abs=1e-5)


def test_a_study_scores_a_tagging_task_whose_tag_set_comes_from_its_file(mini_glue, tmp_path, monkeypatch):
    """A study's Single and Multi recipes with a tagging task that declares no labels and names its files
    relative to the working directory: the scores and the report take its metrics from the trained runs
    (entity F1 for a BIO set), not from the bare config, and an interrupted stage resumes."""
    from manytask.distill.recipes import StudyConfig
    from manytask.distill.study import recipe_dir, run_study
    from manytask.report.bam import write_report
    from tests.conftest import TINY

    monkeypatch.chdir(tmp_path)
    entry = {**conll_task(tmp_path), "train": "train.conll", "dev": "dev.conll"}
    cfg = StudyConfig.model_validate({
        "name": "tagged", "seeds": [1], "glue_dir": str(mini_glue),
        "tasks": [entry, {"name": "sst2", "max_train": 16}], "model": dict(TINY),
        "single": {"batch_size": 8, "steps": 2, "progress": False},
        "multi": {"batch_size": 8, "steps": 2, "progress": False},
        "recipes": [{"name": "Single", "student": "single", "only": ["ner"]}, {"name": "Multi", "student": "multi"}],
        "baselines": ["Single"]})
    out = tmp_path / "study"
    run_study(cfg, out)
    for r in ("Single", "Multi"):
        scores = json.loads((recipe_dir(out, 1, cfg.recipe(r)) / "scores.json").read_text())
        assert scores["primary_metric"]["ner"] == "entity_f1"
        assert scores["primary"]["ner"] == pytest.approx(scores["tasks"]["ner"]["dev"]["entity_f1"])
    rep = write_report(out)
    assert rep["primary"]["ner"] == "entity_f1" and rep["primary"]["sst2"] == "accuracy"
    # a stage whose scores were never written (killed after training) resumes its run with the same config
    done = recipe_dir(out, 1, cfg.recipe("Single")) / "scores.json"
    before = json.loads(done.read_text())
    done.unlink()
    run_study(cfg, out)
    assert json.loads(done.read_text())["primary"] == before["primary"]


def test_conll_files_default_to_words_first_and_tags_last(tmp_path):
    """The common layouts read without 'columns:': two columns (word TAG) and CoNLL-2003's four (the NER tag
    last); IOB1 tags as distributed score the same entities as BIO."""
    (tmp_path / "two.conll").write_text("Anna B-PER\nwent O\nhome O\n\nRome B-LOC\n")
    (tmp_path / "four.conll").write_text("-DOCSTART- -X- -X- O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n")
    for name, words, tags in (("two", ["Anna", "went", "home"], ["B-PER", "O", "O"]),
                              ("four", ["EU", "rejects"], ["I-ORG", "O"])):
        entry = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / f"{name}.conll"))
        spec = entry.resolve(tmp_path)
        ex = read_split(spec, "train", tmp_path)
        assert ex[0].words == words and ex[0].tags == tags, name
    bad = TaskEntry(name="ner", kind="tagging", train=str(tmp_path / "two.conll"), text_fields=["token"])
    with pytest.raises(DataError, match="name the CoNLL columns"):
        read_split(bad.resolve(tmp_path), "train", tmp_path)
