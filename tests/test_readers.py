from pathlib import Path

import pytest

from manytask.config import TaskEntry
from manytask.data.loading import load_task
from manytask.data.readers import DataError, read_split
from manytask.kinds import get_kind
from manytask.tasks import glue_task


def test_cola_without_header_keeps_quotes_as_text(mini_glue):
    spec = glue_task("CoLA")
    ex = read_split(spec, "train", spec.split_root(mini_glue))
    assert len(ex) == 40
    assert ex[0].text_a.startswith('"') and ex[0].label == 0 and ex[1].label == 1
    assert ex[0].id == "cola/train/1"  # line number: no index column in CoLA


def test_mrpc_bom_header_and_unbalanced_quote(mini_glue):
    spec = glue_task("mrpc")
    ex = read_split(spec, "dev", spec.split_root(mini_glue))
    assert len(ex) == 40 and ex[0].text_b.startswith('"')


def test_unlabeled_test_file_and_stable_ids(mini_glue):
    spec = glue_task("sst-2")
    ex = read_split(spec, "test", spec.split_root(mini_glue))
    assert [e.label for e in ex] == [None] * 10
    assert ex[3].id == "sst2/test/3" and ex[3].key == "3"


def test_regression_label_range(mini_glue):
    spec = glue_task("stsb")
    ex = read_split(spec, "train", spec.split_root(mini_glue))
    assert all(0 <= e.label <= 5 for e in ex)
    from manytask.kinds.regression import scale, unscale

    assert scale(spec, 5.0) == 1.0 and unscale(spec, 0.5) == 2.5
    assert get_kind("regression").target(spec, 5.0) == 1.0  # what the features carry: the [0, 1] scale


def _user(tmp_path, name, text, **kw):
    path = tmp_path / name
    path.write_text(text)
    entry = TaskEntry(name="mine", kind=kw.pop("kind", "classification"), train=str(path), **kw)
    return entry.resolve(tmp_path)


def test_malformed_line_names_file_and_line(tmp_path):
    spec = _user(tmp_path, "a.tsv", "text\tlabel\nhello\tyes\nbroken line\n", text_fields=["text"],
                 label_field="label", labels=["yes", "no"])
    with pytest.raises(DataError, match=r"a\.tsv, line 3: expected 2 fields"):
        read_split(spec, "train", tmp_path)


def test_label_outside_declared_labels(tmp_path):
    spec = _user(tmp_path, "a.csv", "text,label\nhello,yes\nbye,maybe\n", text_fields=["text"],
                 label_field="label", labels=["yes", "no"])
    with pytest.raises(DataError, match=r"a\.csv, line 3, field 'label': label 'maybe' is not one of"):
        read_split(spec, "train", tmp_path)


def test_missing_column_and_empty_text(tmp_path):
    spec = _user(tmp_path, "a.jsonl", '{"text": "hi", "label": "yes"}\n{"txt": "x", "label": "no"}\n',
                 text_fields=["text"], label_field="label", labels=["yes", "no"])
    with pytest.raises(DataError, match=r"line 2, field 'text': missing column"):
        read_split(spec, "train", tmp_path)
    spec = _user(tmp_path, "b.jsonl", '{"text": "  ", "label": "yes"}\n', text_fields=["text"],
                 label_field="label", labels=["yes", "no"])
    with pytest.raises(DataError, match=r"line 1, field 'text': empty text"):
        read_split(spec, "train", tmp_path)


def test_bad_json_and_regression_out_of_range(tmp_path):
    spec = _user(tmp_path, "c.jsonl", '{"text": "hi", "y": 1}\n{oops\n', text_fields=["text"], label_field="y",
                 kind="regression", label_range=(0, 1))
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read_split(spec, "train", tmp_path)
    spec = _user(tmp_path, "d.jsonl", '{"text": "hi", "y": 3}\n', text_fields=["text"], label_field="y",
                 kind="regression", label_range=(0, 1))
    with pytest.raises(DataError, match=r"outside the declared label_range"):
        read_split(spec, "train", tmp_path)


def test_missing_file_is_named(tmp_path):
    spec = TaskEntry(name="mine", kind="classification", train=str(tmp_path / "nope.csv"), text_fields=["t"],
                     label_field="l", labels=["a", "b"]).resolve(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_split(spec, "train", tmp_path)


def test_resplit_is_stratified_seeded_and_disjoint(mini_glue):
    entry = TaskEntry.model_validate({"name": "mnli", "resplit": {"source": "dev_matched", "dev_fraction": 0.2}})
    data = load_task(entry, glue_task("mnli"), mini_glue, data_seed=0)
    train_ids = {e.id for e in data.train}
    (held,) = data.evals.values()
    assert len(held) == 24 and len(data.train) == 96 and not train_ids & {e.id for e in held}
    assert sorted(e.label for e in held) == [0] * 8 + [1] * 8 + [2] * 8  # stratified
    assert "re-split" in next(iter(data.eval_titles.values()))
    again = load_task(entry, glue_task("mnli"), mini_glue, data_seed=0)
    assert [e.id for e in again.train] == [e.id for e in data.train]


def test_cap_is_independent_of_training_seed(mini_glue):
    entry = TaskEntry(name="sst2", max_train=10)
    a = load_task(entry, glue_task("sst2"), mini_glue, data_seed=0)
    b = load_task(entry, glue_task("sst2"), mini_glue, data_seed=0)
    assert len(a.train) == 10 and [e.id for e in a.train] == [e.id for e in b.train]
    assert any("capped" in n for n in a.notes)


def test_real_glue_quirks_if_present():
    root = Path(__file__).resolve().parents[2] / "shared" / "glue"
    if not (root / "CoLA" / "dev.tsv").exists():
        pytest.skip("no ../shared/glue")
    counts = {("cola", "dev"): 1043, ("mrpc", "train"): 3668, ("stsb", "dev"): 1500, ("rte", "dev"): 277,
              ("mnli", "diagnostic"): 1104}
    for (task, split), n in counts.items():
        spec = glue_task(task)
        assert len(read_split(spec, split, spec.split_root(root))) == n


# ---- user data is never silently changed: quoting, multi-line records, encodings, line numbers -------------
def test_tsv_quotes_are_text_by_default(tmp_path):
    """A '"' opening a TSV field must not swallow the following lines (GLUE's files hold such quotes)."""
    quote = '"'
    lines = ["text\tlabel"] + [f'{quote if i == 2 else ""}sentence {i}\t{"yes" if i % 2 else "no"}' for i in range(30)]
    spec = _user(tmp_path, "q.tsv", "\n".join(lines) + "\n", text_fields=["text"], label_field="label",
                 labels=["yes", "no"])
    ex = read_split(spec, "train", tmp_path)
    assert len(ex) == 30 and ex[2].text_a == '"sentence 2' and ex[3].text_a == "sentence 3"


def test_a_quoted_record_over_several_lines_is_refused_unless_allowed(tmp_path):
    text = 'text,label\nfine,yes\n"two\nlines",no\nok,yes\n'
    spec = _user(tmp_path, "m.csv", text, text_fields=["text"], label_field="label", labels=["yes", "no"])
    with pytest.raises(DataError, match=r"m\.csv, line 3: a quoted field runs from line 3 to line 4.*multiline: true"):
        read_split(spec, "train", tmp_path)
    spec = _user(tmp_path, "m.csv", text, text_fields=["text"], label_field="label", labels=["yes", "no"],
                 multiline=True)
    ex = read_split(spec, "train", tmp_path)
    assert [e.text_a for e in ex] == ["fine", "two\nlines", "ok"] and ex[2].key == "5"  # keys: starting lines
    tsv = _user(tmp_path, "m.tsv", 'text\tlabel\n"a\tyes\nb"\tno\n', text_fields=["text"], label_field="label",
                labels=["yes", "no"], quoting=True)
    with pytest.raises(DataError, match=r"m\.tsv, line 2: a quoted field runs from line 2 to line 3"):
        read_split(tsv, "train", tmp_path)


def test_an_unclosed_csv_quote_is_reported_on_its_own_line(tmp_path):
    text = "text,label\n" + "".join(f"row {i},yes\n" for i in range(5)) + '"unclosed,no\nmore,yes\nlast,no\n'
    spec = _user(tmp_path, "u.csv", text, text_fields=["text"], label_field="label", labels=["yes", "no"])
    with pytest.raises(DataError, match=r"u\.csv, line 7: "):
        read_split(spec, "train", tmp_path)
    spec = _user(tmp_path, "u.csv", text, text_fields=["text"], label_field="label", labels=["yes", "no"],
                 multiline=True)
    with pytest.raises(DataError, match=r"u\.csv, line 7: malformed CSV"):
        read_split(spec, "train", tmp_path)


def test_a_file_that_is_not_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_bytes("text\tlabel\nfine\tyes\n".encode() + "café au lait\tno\n".encode("latin-1"))
    spec = TaskEntry(name="mine", kind="classification", train=str(path), text_fields=["text"], label_field="label",
                     labels=["yes", "no"]).resolve(tmp_path)
    with pytest.raises(DataError, match=r"l\.tsv, line 3: not valid utf-8 at byte offset 23 \(column 4, bytes e9\)"
                                       r".*encoding"):
        read_split(spec, "train", tmp_path)
    spec = TaskEntry(name="mine", kind="classification", train=str(path), text_fields=["text"], label_field="label",
                     labels=["yes", "no"], encoding="latin-1").resolve(tmp_path)
    assert read_split(spec, "train", tmp_path)[1].text_a == "café au lait"
    with pytest.raises(Exception, match="unknown encoding 'latin-99'"):
        TaskEntry(name="mine", kind="classification", train=str(path), text_fields=["text"], label_field="label",
                  labels=["yes", "no"], encoding="latin-99").resolve(tmp_path)
