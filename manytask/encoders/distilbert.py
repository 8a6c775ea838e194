"""DistilBERT: embeddings without segment ids, layers at ``transformer.layer``, no pooler."""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask

from manytask.encoders import register_encoder
from manytask.encoders.base import EncoderAdapter


@register_encoder
class DistilBertAdapter(EncoderAdapter):
    model_types = ("distilbert",)
    family = "DistilBERT"
    layers_path = "transformer.layer"

    @classmethod
    def dropout_overrides(cls, dropout: float) -> dict:
        return {"dropout": dropout, "attention_dropout": dropout}

    @classmethod
    def resize(cls, config, hidden, layers, heads, intermediate) -> None:
        config.dim, config.n_layers, config.n_heads, config.hidden_dim = hidden, layers, heads, intermediate

    @classmethod
    def config_layers(cls, config) -> int:
        return config.n_layers

    @classmethod
    def set_depth(cls, config, layers: int) -> None:
        config.n_layers = layers

    @property
    def hidden_size(self) -> int:
        return self.config.dim

    @property
    def segment_types(self) -> int:
        return 0

    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.model.embeddings(input_ids)

    def context(self, hidden, attention_mask):
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def select(self, context, rows):
        return context[rows] if isinstance(context, torch.Tensor) else context

    def run_layer(self, layer, hidden, context):
        out = layer(hidden, context)
        return out[0] if isinstance(out, tuple) else out

    def _new_layer(self, index):
        return type(self.layers[index])(self.config)

    def depth(self, name):
        if name.startswith("embeddings."):
            return 0
        if name.startswith("transformer.layer."):
            return int(name.split(".")[2]) + 1
        return None
