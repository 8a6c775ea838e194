"""Every data source (TSV, Parquet, a saved ``datasets`` directory, a hub dataset, rows in memory) gives the
same examples, ids and checks as a file, and its errors name the source, the row and the field."""

from __future__ import annotations

import json

import pytest

import manytask as mt
from manytask.data import sources
from manytask.data.files import DataError
from manytask.data.readers import read_split
from manytask.entries import TaskEntry

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

ROWS = [{"uid": f"u{i}", "sentence": f"sentence number {i}", "label": ["neg", "pos"][i % 2]} for i in range(6)]
TASK = {"name": "polarity", "kind": "classification", "labels": ["neg", "pos"], "text_fields": ["sentence"],
        "label_field": "label"}


def _examples(entry: dict, split: str = "train"):
    spec = TaskEntry.model_validate(entry).resolve(__import__("pathlib").Path.cwd())
    return read_split(spec, split, spec.split_root(None))


def _summary(examples):
    return [(e.id, e.key, e.text_a, e.label) for e in examples]


def _tsv(path, rows):
    path.write_text("uid\tsentence\tlabel\n" + "".join(f"{r['uid']}\t{r['sentence']}\t{r['label']}\n" for r in rows))
    return path


def test_every_source_reads_the_same_examples_and_ids(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "train.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    import pandas as pd

    by_id = {**TASK, "id_field": "uid"}
    want = _summary(_examples({**by_id, "train": str(_tsv(tmp_path / "train.tsv", ROWS))}))
    assert [k for _, k, _, _ in want] == [r["uid"] for r in ROWS] and want[1][3] == 1
    assert _summary(_examples({**by_id, "train": str(tmp_path / "train.parquet")})) == want  # by suffix
    assert _summary(_examples({**by_id, "train": str(tmp_path / "saved")})) == want  # detected as hf_disk
    data = mt.task_data({"tasks": [{**by_id, "train": pd.DataFrame(ROWS), "dev": ROWS}]})["polarity"]
    assert _summary(data.train) == want
    assert [(e.key, e.text_a, e.label) for e in data.evals["dev"]] == [(k, t, y) for _, k, t, y in want]
    # without an id_field, a table's id is its row index (a text file's, its line)
    assert [e.key for e in _examples({**TASK, "train": str(tmp_path / "train.parquet")})] == [str(i) for i in range(6)]
    assert [e.key for e in _examples({**TASK, "train": str(tmp_path / "train.tsv")})] == [str(i) for i in range(2, 8)]


def test_errors_name_the_source_the_row_and_the_field(tmp_path):
    bad = [dict(r) for r in ROWS]
    bad[3]["label"] = "neutral"
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet, row 3, field 'label': label 'neutral' is not one of"):
        _examples({**TASK, "train": str(tmp_path / "bad.parquet")})
    with pytest.raises(DataError, match=r"rows given for task 'polarity' \(train, saved as .*\), row 3, field 'label'"):
        mt.task_data({"tasks": [{**TASK, "train": bad, "dev": ROWS}]})
    missing_text = [dict(r) for r in ROWS]
    missing_text[2]["sentence"] = None
    datasets.Dataset.from_list(missing_text).save_to_disk(str(tmp_path / "gap"))
    with pytest.raises(DataError, match=r"gap, row 2, field 'sentence': expected text, found nothing"):
        _examples({**TASK, "train": str(tmp_path / "gap")})
    twice = [dict(r) for r in ROWS]
    twice[4]["uid"] = "u1"
    pq.write_table(pa.Table.from_pylist(twice), tmp_path / "twice.parquet")
    with pytest.raises(DataError, match=r"row 4, field 'uid': id 'u1' already used on row 1"):
        _examples({**TASK, "id_field": "uid", "train": str(tmp_path / "twice.parquet")})
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        _examples({**TASK, "train": str(tmp_path / "junk.parquet")})
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DataError, match="not one saved by datasets' save_to_disk"):
        _examples({**TASK, "train": str(tmp_path / "plain_dir")})


def test_a_saved_dataset_dict_takes_its_split_and_class_names(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = {"text": [r["sentence"] for r in ROWS], "label": [i % 2 for i in range(6)]}
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                                  "validation": datasets.Dataset.from_dict({k: v[:2] for k, v in rows.items()},
                                                                           features=features)})
    saved.save_to_disk(str(tmp_path / "dd"))
    entry = {**TASK, "text_fields": ["text"], "train": {"path": str(tmp_path / "dd"), "split": "train"},
             "dev": str(tmp_path / "dd")}  # dev: the 'validation' split by default
    assert [e.label for e in _examples(entry)] == [0, 1, 0, 1, 0, 1]  # ids 0/1 read as the names neg/pos
    assert len(_examples(entry, "dev")) == 2
    # a task whose labels are the ids themselves ("0", "1", as GLUE's) keeps the ids
    assert [e.label for e in _examples({**entry, "labels": ["0", "1"]})] == [0, 1, 0, 1, 0, 1]
    with pytest.raises(DataError, match=r"no split 'tset' in the saved dataset \(it has: train, validation\)"):
        _examples({**entry, "train": {"path": str(tmp_path / "dd"), "split": "tset"}})


def test_tagging_from_a_saved_dataset_names_its_tag_ids(tmp_path):
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    datasets.Dataset.from_dict({"tokens": [["Ann", "Lee", "ran"], ["It", "rained"]], "ner_tags": [[1, 2, 0], [0, 0]]},
                               features=features).save_to_disk(str(tmp_path / "ner"))
    examples = _examples({"name": "ner", "kind": "tagging", "label_field": "ner_tags", "train": str(tmp_path / "ner"),
                          "labels": ["O", "B-PER", "I-PER"]})
    assert examples[0].words == ["Ann", "Lee", "ran"] and examples[0].tags == ["B-PER", "I-PER", "O"]
    assert examples[0].label == [1, 2, 0] and examples[1].key == "1"


def test_a_hub_dataset_is_loaded_by_name_config_and_split(tmp_path, monkeypatch):
    asked = []

    def load_dataset(name, config, split):
        asked.append((name, config, split))
        return datasets.Dataset.from_list(ROWS)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    entry = {**TASK, "train": {"source": "hf", "dataset": "someone/polarity", "config": "en"},
             "dev": {"source": "hf", "dataset": "someone/polarity", "config": "en", "split": "test[:2]"}}
    data = mt.task_data({"tasks": [entry]})["polarity"]
    assert asked == [("someone/polarity", "en", "train"), ("someone/polarity", "en", "test[:2]")]
    assert [e.id for e in data.train][:2] == ["polarity/train/0", "polarity/train/1"] and data.train[1].label == 1
    assert any(k.startswith("hf:someone/polarity/en (split train)") for k in data.file_hashes)


def test_an_unreachable_hub_is_one_line_that_says_how_to_pass_a_local_copy(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    entry = {**TASK, "train": {"source": "hf", "dataset": "glue", "config": "sst2"}, "dev": ROWS}
    with pytest.raises(sources.HubUnreachable) as err:
        mt.task_data({"tasks": [entry]})
    message = str(err.value)
    assert "\n" not in message and message.startswith("hf:glue/sst2 (split train): the Hugging Face hub cannot be")
    assert "HF_HUB_OFFLINE=1" in message and "save_to_disk" in message


def test_hub_splits_need_a_dataset_and_files_need_a_path():
    with pytest.raises(mt.ManytaskError, match="names its 'dataset'"):
        _examples({**TASK, "train": {"source": "hf"}})
    with pytest.raises(mt.ManytaskError, match="set 'source: hf'"):
        _examples({**TASK, "train": {"path": "x.tsv", "dataset": "glue"}})


def test_a_run_trained_on_a_dataframe_keeps_its_rows_and_predicts_on_one(mini_glue, tiny_config, tmp_path):
    import pandas as pd

    frame = pd.DataFrame([{"sentence": f"{w} film", "label": "pos" if w in ("good", "fine") else "neg"}
                          for w in ["good", "bad", "fine", "awful"] * 4])
    tiny_config["tasks"] = [{**TASK, "train": frame, "dev": frame.head(6)}]
    run = mt.train(tiny_config, out=tmp_path / "run", overrides={"train.steps": 2, "train.eval_every": None})
    saved = run.cfg.tasks[0].train
    assert saved.format == "rows" and saved.path.startswith(str(tmp_path / "run" / "inputs"))
    assert json.loads(open(saved.path).readline()) == {"sentence": "good film", "label": "pos"}
    again = mt.open_run(tmp_path / "run")  # the saved config re-reads the saved rows
    assert set(again.scores().primary) == {"polarity"}
    n = run.predict_file("polarity", [{"sentence": "good film"}, {"sentence": "bad film"}], tmp_path / "out.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 2 and [x["id"] for x in lines] == ["0", "1"] and {x["prediction"] for x in lines} <= {"neg", "pos"}
