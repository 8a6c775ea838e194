"""The one interface manytask needs from an encoder architecture, so the multi-task model, branches, layer-wise
learning rates, bundles and serving work the same for every family that has an adapter.

An adapter wraps a loaded ``transformers`` model and says: how to embed the input, which modules are its
layers, what a layer needs beside the hidden states (the attention mask, relative positions, rotary
embeddings ...) and how to call it, the norm after the last layer, whether the input carries segment ids, the
pretrained pooler (if any), how to build a fresh layer and how deep each parameter sits.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from torch import nn
from transformers import PreTrainedModel

from manytask.errors import ConfigError


class EncoderError(ConfigError):
    """An encoder that cannot be loaded or cannot do what the config asks; the message names it and what to do."""


class EncoderAdapter:
    """One architecture family behind the interface; register subclasses with ``@register_encoder``."""

    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter serves
    family: ClassVar[str]
    has_pooler: ClassVar[bool] = False  # a pretrained pooler (dense + tanh over the first token) can be loaded

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.config = model.config
        for i, layer in enumerate(self.layers):  # a branch's copies keep the index of the layer they copy
            layer.manytask_index = i

    # ---- building and loading ---------------------------------------------------------------------------
    @classmethod
    def model_kwargs(cls, pooler: bool) -> dict:
        """Extra keyword arguments of the family's ``from_config`` / ``from_pretrained``."""
        return {}

    @classmethod
    def dropout_overrides(cls, dropout: float) -> dict:
        """Config attributes that set the family's dropout."""
        return {}

    @classmethod
    def resize(cls, config, hidden: int, layers: int, heads: int, intermediate: int) -> None:
        """Give a config a (tiny, random) size in the family's own attribute names (most use these)."""
        config.hidden_size, config.num_hidden_layers = hidden, layers
        config.num_attention_heads, config.intermediate_size = heads, intermediate

    layers_path: ClassVar[str] = "encoder.layer"  # where the layers are in the family's state dict
    token_classifier_exact: ClassVar[bool] = True  # its *ForTokenClassification is dropout + linear per token
    sequence_classifier_exact: ClassVar[tuple[str, ...]] = ()  # model types whose *ForSequenceClassification is
    # dropout + linear over the pretrained pooler

    @classmethod
    def config_layers(cls, config) -> int:
        """How many layers a config describes (before any model is built)."""
        return config.num_hidden_layers

    @classmethod
    def set_depth(cls, config, layers: int) -> None:
        """Make a config describe ``layers`` layers (an exported task: its trunk below the split, then its branch)."""
        config.num_hidden_layers = layers

    # ---- the parts --------------------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's layers, found at ``layers_path`` (the same path names them in the state dict)."""
        return self.model.get_submodule(self.layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def segment_types(self) -> int:
        """How many segment (token type) ids the embeddings know: 0 where they read none."""
        return int(getattr(self.config, "type_vocab_size", 0) or 0)

    @property
    def pooler(self) -> Optional[nn.Module]:
        return None

    def embed(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor],
              attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """What every layer needs beside the hidden states, computed once per batch."""
        raise NotImplementedError

    def select(self, context: Any, rows: torch.Tensor) -> Any:
        """The context of some rows of the batch (a task that runs on its own rows)."""
        raise NotImplementedError

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, context: Any) -> torch.Tensor:
        raise NotImplementedError

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        """The norm after the last layer (identity for post-norm families)."""
        return hidden

    def new_layer(self, index: int) -> nn.Module:
        """A freshly built layer of the same class as layer ``index`` (its weights are loaded next)."""
        layer = self._new_layer(index)
        layer.manytask_index = index
        return layer

    def _new_layer(self, index: int) -> nn.Module:
        raise NotImplementedError

    def depth(self, name: str) -> Optional[int]:
        """0 for the embeddings, i + 1 for layer i, None for the rest (pooler, final norm: with the heads).
        ``name`` is a parameter name inside the transformers model."""
        raise NotImplementedError
