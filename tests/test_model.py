from pathlib import Path

import pytest
import torch

from manytask.config import ModelConfig, RandomEncoder
from manytask.encoders.loading import load_encoder, load_tokenizer
from manytask.models.heads import mean_pool
from manytask.models.multitask import MultiTaskModel
from manytask.tasks import glue_task
from manytask.training.optim import layerwise_groups

SPECS = [glue_task("rte"), glue_task("stsb"), glue_task("mnli")]


@pytest.fixture(scope="module")
def encoder_and_batch():
    torch.manual_seed(0)
    enc = load_encoder(ModelConfig(random_init=RandomEncoder(num_layers=3))).eval()
    tok = load_tokenizer("default")
    batch = tok(["a short one", "a noticeably longer sentence with more words"], ["pair", "another pair here"],
                padding=True, return_tensors="pt")
    return enc, dict(batch)


def logits(outputs) -> dict:
    return {task: out.logits for task, out in outputs.items()}


def test_all_k0_equals_plain_shared_encoder(encoder_and_batch):
    enc, batch = encoder_and_batch
    model = MultiTaskModel(enc, SPECS).eval()
    with torch.no_grad():
        cls = enc(**batch).last_hidden_state[:, 0]
        out = logits(model(**batch))
    for t in SPECS:
        assert torch.allclose(out[t.name], model.heads[t.name](cls), atol=1e-6)
    assert out["mnli"].shape == (2, 3) and out["stsb"].shape == (2,)


def test_branch_starts_as_copy_and_is_independent(encoder_and_batch):
    enc, batch = encoder_and_batch
    model = MultiTaskModel(enc, SPECS, {"rte": 1, "stsb": 2}).eval()
    assert model.split_depth == {"rte": 2, "stsb": 1, "mnli": 3}
    with torch.no_grad():
        before = logits(model(**batch))
        cls = enc(**batch).last_hidden_state[:, 0]
        assert torch.allclose(before["rte"], model.heads["rte"](cls), atol=1e-5)
        model.branches["rte"][0].output.dense.weight.add_(torch.randn_like(model.branches["rte"][0].output.dense.weight))  # change the branch only
        after = logits(model(**batch))
    assert not torch.allclose(after["rte"], before["rte"])
    assert torch.equal(after["mnli"], before["mnli"]) and torch.equal(after["stsb"], before["stsb"])
    with pytest.raises(KeyError, match="unknown task"):
        model(**batch, tasks=["qqp"])


def test_freeze_trunk_leaves_branches_and_heads(encoder_and_batch):
    enc, _ = encoder_and_batch
    model = MultiTaskModel(enc, SPECS, {"rte": 1})
    model.freeze_trunk()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("branches.rte", "heads.")) for n in trainable)
    for p in model.encoder.parameters():
        p.requires_grad_(True)


def test_layerwise_lr_groups(encoder_and_batch):
    enc, _ = encoder_and_batch
    model = MultiTaskModel(enc, SPECS, {"rte": 1})
    groups = layerwise_groups(model, lr=1.0, decay=0.5, weight_decay=0.01)
    by_depth = {g["depth"]: g["lr"] for g in groups}
    assert by_depth == {0: 0.5 ** 4, 1: 0.5 ** 3, 2: 0.5 ** 2, 3: 0.5, 4: 1.0}
    names = {n: g for g in groups for n in g["param_names"]}
    assert names["heads.rte.out.weight"]["lr"] == 1.0
    assert names["encoder.embeddings.word_embeddings.weight"]["lr"] == 0.5 ** 4
    assert names["branches.rte.0.output.dense.weight"]["lr"] == 0.5  # copy of the top layer
    assert names["encoder.encoder.layer.0.output.dense.bias"]["weight_decay"] == 0.0
    assert len(names) == sum(1 for _ in model.parameters())


def test_mean_pooling_ignores_padding():
    h = torch.randn(1, 5, 4)
    m = torch.tensor([[1, 1, 1, 0, 0]])
    padded = h.clone()
    padded[:, 3:] = 99.0
    assert torch.allclose(mean_pool(h, m), mean_pool(padded, m))
    assert torch.allclose(mean_pool(h, m), h[:, :3].mean(1))


def test_pooler_pooling_uses_the_pretrained_pooler(encoder_and_batch, tmp_path):
    """pooling: pooler puts heads on BERT's dense + tanh over [CLS], with the encoder's pretrained weights."""
    from safetensors import safe_open
    from transformers import BertConfig, BertModel

    from manytask.config import ConfigError
    from manytask.encoders.loading import resolve_encoder

    minilm = load_encoder(ModelConfig(pooling="pooler"))
    path = next(Path(resolve_encoder("default")).glob("*.safetensors"))
    with safe_open(str(path), "pt") as f:
        assert torch.equal(minilm.pooler.dense.weight, f.get_tensor("pooler.dense.weight"))
    enc, batch = encoder_and_batch
    pooled_enc = load_encoder(ModelConfig(random_init=RandomEncoder(num_layers=3), pooling="pooler")).eval()
    model = MultiTaskModel(pooled_enc, SPECS, pooling="pooler").eval()
    with torch.no_grad():
        last = pooled_enc(**batch).last_hidden_state
        out = logits(model(**batch))
    want = torch.tanh(pooled_enc.pooler.dense(last[:, 0]))
    assert torch.allclose(out["rte"], model.heads["rte"](want), atol=1e-6)
    # an encoder saved without a pooler cannot give pooling: pooler
    bare = BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32), add_pooling_layer=False)
    bare.save_pretrained(str(tmp_path / "bare"))
    with pytest.raises(ConfigError, match="has no pretrained pooler"):
        load_encoder(ModelConfig(encoder=str(tmp_path / "bare"), pooling="pooler"))
    with pytest.raises(ValueError, match="needs the encoder's pooler"):
        MultiTaskModel(enc, SPECS, pooling="pooler")
