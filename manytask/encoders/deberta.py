"""DeBERTa-v2/v3: disentangled attention, so every layer also takes the relative positions and the relative
position embeddings (shared by the layers, computed once a batch); the embeddings read the attention mask; an
optional convolution after the first layer."""

from __future__ import annotations

from manytask.encoders import register_encoder
from manytask.encoders.base import EncoderAdapter


@register_encoder
class DebertaV2Adapter(EncoderAdapter):
    model_types = ("deberta-v2",)
    family = "DeBERTa-v2/v3"

    @classmethod
    def dropout_overrides(cls, dropout: float) -> dict:
        return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}

    def embed(self, input_ids, token_type_ids, attention_mask):
        if self.segment_types < 1:
            token_type_ids = None
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    def context(self, hidden, attention_mask):
        enc = self.model.encoder
        return {"mask": enc.get_attention_mask(attention_mask), "input_mask": attention_mask, "embedded": hidden,
                "relative_pos": enc.get_rel_pos(hidden), "rel_embeddings": enc.get_rel_embedding()}

    def select(self, context, rows):
        return {**context, "mask": context["mask"][rows], "input_mask": context["input_mask"][rows],
                "embedded": context["embedded"][rows]}

    def run_layer(self, layer, hidden, context):
        out, _ = layer(hidden, context["mask"], relative_pos=context["relative_pos"],
                       rel_embeddings=context["rel_embeddings"])
        conv = self.model.encoder.conv
        if conv is not None and getattr(layer, "manytask_index", None) == 0:
            out = conv(context["embedded"], out, context["input_mask"])
        return out

    def _new_layer(self, index):
        return type(self.layers[index])(self.config)

    def depth(self, name):
        if name.startswith("embeddings."):
            return 0
        if name.startswith("encoder.layer."):
            return int(name.split(".")[2]) + 1
        return None
