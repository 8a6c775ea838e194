"""ModernBERT: rotary position embeddings (per attention type), layers that alternate global and local
(sliding-window) attention, a norm after the last layer, no segment ids, no pooler."""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

from manytask.encoders import register_encoder
from manytask.encoders.base import EncoderAdapter


@register_encoder
class ModernBertAdapter(EncoderAdapter):
    model_types = ("modernbert",)
    family = "ModernBERT"
    layers_path = "layers"
    token_classifier_exact = False  # its token classifier has a prediction head (dense, activation, norm) first

    @classmethod
    def dropout_overrides(cls, dropout: float) -> dict:
        return {"attention_dropout": dropout, "mlp_dropout": dropout, "embedding_dropout": dropout}

    @classmethod
    def set_depth(cls, config, layers: int) -> None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = list(config.layer_types)[:layers]

    @property
    def segment_types(self) -> int:
        return 0

    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.model.embeddings(input_ids=input_ids)

    def context(self, hidden, attention_mask):
        kw = {"config": self.config, "inputs_embeds": hidden, "attention_mask": attention_mask}
        masks = {"full_attention": create_bidirectional_mask(**kw),
                 "sliding_attention": create_bidirectional_sliding_window_mask(**kw)}
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        rotary = {t: self.model.rotary_emb(hidden, positions, t) for t in set(self.config.layer_types)}
        return {"masks": masks, "rotary": rotary}

    def select(self, context, rows):
        return {**context, "masks": {k: (m[rows] if isinstance(m, torch.Tensor) else m)
                                     for k, m in context["masks"].items()}}

    def run_layer(self, layer, hidden, context):
        kind = layer.attention_type
        return layer(hidden, attention_mask=context["masks"][kind], position_embeddings=context["rotary"][kind])

    def final(self, hidden):
        return self.model.final_norm(hidden)

    def _new_layer(self, index):
        return type(self.layers[index])(self.config, index)

    def depth(self, name):
        if name.startswith("embeddings."):
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        return None
