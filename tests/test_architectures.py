"""Every encoder family through the adapter interface, on tiny random encoders saved by transformers: the
multi-task model computes what the family's own model computes, and a flex round (full and partial
fine-tuning, a branch distilled into fewer layers from the teacher's bottom layers, a bundle) serves answers
equal to each task's own model. ALBERT, a typo and an unreachable hub name are one-line errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from manytask.encoders import adapter_for
from manytask.encoders.base import EncoderError
from manytask.models.heads import mean_pool
from manytask.models.multitask import MultiTaskModel
from manytask.tasks import glue_task
from tests.tiny_encoders import ARCHITECTURES, save_tiny


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {a: save_tiny(a, root) for a in ARCHITECTURES}


def _batch(tok, pairs=False):
    texts = ["a good film, warm and funny", "dull"]
    enc = tok(texts, texts[::-1] if pairs else None, padding=True, return_tensors="pt",
              return_token_type_ids="token_type_ids" in tok.model_input_names)
    return enc


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_adapter_computes_what_the_family_computes(encoders, arch):
    from transformers import AutoTokenizer

    path = encoders[arch]
    hf = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = _batch(tok)
    types = enc.get("token_type_ids")
    model = MultiTaskModel(hf, [glue_task("sst2"), glue_task("stsb")], {"stsb": 2}, pooling="mean").eval()
    with torch.no_grad():
        want = hf(**{k: v for k, v in enc.items()}).last_hidden_state
        out = model(enc["input_ids"], enc["attention_mask"], types)
    head = model.heads["sst2"]
    assert torch.allclose(out["sst2"].logits, head(mean_pool(want, enc["attention_mask"])), atol=1e-5)
    # a branch starts as a copy of the top layers: before training, the branched task sees the same states
    assert torch.allclose(out["stsb"].logits, model.heads["stsb"](mean_pool(want, enc["attention_mask"])), atol=1e-5)
    adapter = adapter_for(hf)
    assert len(adapter.layers) == 3 and model.split_depth == {"sst2": 3, "stsb": 1}
    assert {model.layer_depth(n) for n, _ in model.named_parameters() if n.startswith("encoder.")} >= {0, 1, 2, 3}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_flex_round_serves_each_tasks_own_answers(encoders, arch, mini_glue, tmp_path):
    from fastapi.testclient import TestClient

    import manytask as mt
    from manytask.flex.config import FlexConfig
    from manytask.flex.pipeline import run_flex

    cfg = FlexConfig.model_validate({
        "tasks": [{"name": "sst2", "max_train": 24, "max_eval": 16}, {"name": "mrpc", "max_train": 24, "max_eval": 16}],
        "model": {"encoder": str(encoders[arch]), "max_seq_length": 32, "pooling": "mean"},
        "full": None, "partial": {"batch_size": 8, "steps": 4, "lr": 1e-3, "progress": False},
        "search": {"ks": [2]}, "compress": {"to": [1]}, "mixed": {"delta": 0.0}, "bundle": "kd-1"})
    result = run_flex(cfg, tmp_path / "flex")
    bundle = mt.Bundle(result["bundle"])
    merged = bundle.model()
    for task in ("sst2", "mrpc"):
        sel = result["tasks"][task]
        student = mt.Run.open(tmp_path / "flex" / sel["variants"]["kd-1"]["run"])
        assert student.model_for(task).branch_size(task) == 1 and student.model_for(task).split_depth[task] == 1
        own = mt.Model(student.model_for(task), student.tokenizer(), 32)
        inputs = ["good fine day", "grim cold"] if task == "sst2" else [("good day", "fine day"), ("a", "b")]
        got = merged.predict(inputs, task=task)
        want = own.predict(inputs, task=task)
        for g, w in zip(got, want):
            assert g.label == w.label and g.probs == pytest.approx(w.probs, abs=1e-5)
    with TestClient(mt.app(bundle.root)) as c:
        res = c.post("/v1/predict", json={"inputs": [{"text": "a good day"}], "tasks": ["sst2"]})
    assert res.status_code == 200, res.text


@pytest.mark.parametrize("arch", ["distilbert", "electra", "deberta-v2", "modernbert"])
def test_pooling_pooler_is_refused_where_the_family_has_no_pretrained_pooler(encoders, arch):
    from manytask.config import ModelConfig
    from manytask.encoders.loading import load_encoder

    with pytest.raises(EncoderError, match="no pretrained pooler"):
        load_encoder(ModelConfig(encoder=str(encoders[arch]), pooling="pooler"))


def test_a_tokenizer_with_segment_ids_beside_a_one_segment_encoder_is_refused_at_load(encoders, mini_glue, tmp_path):
    """RoBERTa's table has one segment type; a BERT tokenizer gives a pair's second text type 1 (an IndexError
    mid-training): refused before anything is written."""
    import shutil

    from transformers import AutoTokenizer

    import manytask as mt

    path = tmp_path / "roberta-bert-tok"
    shutil.copytree(encoders["roberta"], path)
    AutoTokenizer.from_pretrained(mt.encoder_path("default")).save_pretrained(str(path))  # declares token types
    cfg = {"tasks": ["mrpc"], "model": {"encoder": str(path), "max_seq_length": 32},
           "train": {"batch_size": 8, "steps": 2, "progress": False}}
    with pytest.raises(EncoderError, match="segment id 1.*knows 1 segment type"):
        mt.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_albert_a_typo_and_an_unreachable_hub_name_are_one_line_errors(tmp_path, mini_glue):
    from transformers import AlbertConfig, AlbertModel

    import manytask as mt

    AlbertModel(AlbertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, embedding_size=8)).save_pretrained(str(tmp_path / "albert"))
    base = {"tasks": ["sst2"], "train": {"steps": 1, "progress": False}}
    cases = {str(tmp_path / "albert"): "shares one layer's weights", str(tmp_path / "no-such-dir"): "is not found",
             "nobody/no-such-model": "cannot load it as a hub name"}
    for encoder, message in cases.items():
        with pytest.raises(EncoderError, match=message):
            mt.train({**base, "model": {"encoder": encoder}}, tmp_path / "run")
        assert not (tmp_path / "run").exists()
