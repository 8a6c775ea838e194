"""Tiny randomly initialised encoders of every family manytask supports, saved by transformers with a tokenizer
(MiniLM's WordPiece; declared without segment ids where the family's own tokenizer has none)."""

from __future__ import annotations

from pathlib import Path

SIZE = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}


def configs() -> dict:
    from transformers import (BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, ModernBertConfig,
                              RobertaConfig, XLMRobertaConfig)

    vocab = 30522
    return {
        "bert": (BertConfig(vocab_size=vocab, **SIZE), True),
        "roberta": (RobertaConfig(vocab_size=vocab, type_vocab_size=1, pad_token_id=0, **SIZE), False),
        "xlm-roberta": (XLMRobertaConfig(vocab_size=vocab, type_vocab_size=1, pad_token_id=0, **SIZE), False),
        "distilbert": (DistilBertConfig(vocab_size=vocab, dim=32, n_layers=3, n_heads=4, hidden_dim=64), False),
        "electra": (ElectraConfig(vocab_size=vocab, embedding_size=16, **SIZE), True),  # embeddings_project
        "deberta-v2": (DebertaV2Config(vocab_size=vocab, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                       position_buckets=16, max_relative_positions=-1, type_vocab_size=0,
                                       conv_kernel_size=3, **SIZE), True),
        "modernbert": (ModernBertConfig(vocab_size=vocab, global_attn_every_n_layers=2, local_attention=8,
                                        pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101,
                                        sep_token_id=102, **SIZE), False),
    }


ARCHITECTURES = list(configs())


def save_tiny(arch: str, root: Path, seed: int = 0) -> Path:
    """A tiny random ``arch`` encoder and a tokenizer, in a directory transformers loads with AutoModel."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import manytask as mt

    out = Path(root) / arch
    if (out / "config.json").exists():
        return out
    config, segments = configs()[arch]
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.save_pretrained(str(out))
    names = {} if segments else {"model_input_names": ["input_ids", "attention_mask"]}
    AutoTokenizer.from_pretrained(mt.encoder_path("default"), **names).save_pretrained(str(out))
    return out
