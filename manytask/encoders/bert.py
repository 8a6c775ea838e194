"""BERT and the families that share its layout (embeddings, ``encoder.layer``, an optional pooler): BERT,
MiniLM, RoBERTa, XLM-RoBERTa."""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask

from manytask.encoders import register_encoder
from manytask.encoders.base import EncoderAdapter


@register_encoder
class BertAdapter(EncoderAdapter):
    model_types = ("bert", "roberta", "xlm-roberta")
    family = "BERT (BERT, MiniLM, RoBERTa, XLM-RoBERTa)"
    has_pooler = True
    sequence_classifier_exact = ("bert",)  # RoBERTa's classifier is a head of its own (dense + tanh + out)

    @classmethod
    def model_kwargs(cls, pooler: bool) -> dict:
        return {"add_pooling_layer": pooler}

    @classmethod
    def dropout_overrides(cls, dropout: float) -> dict:
        return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}

    @property
    def pooler(self):
        return getattr(self.model, "pooler", None)

    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def context(self, hidden, attention_mask):
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def select(self, context, rows):
        return context[rows] if isinstance(context, torch.Tensor) else context

    def run_layer(self, layer, hidden, context):
        return layer(hidden, context)

    def _new_layer(self, index):
        return type(self.layers[index])(self.config, layer_idx=index)

    def depth(self, name):
        if name.startswith("embeddings."):
            return 0
        if name.startswith("encoder.layer."):
            return int(name.split(".")[2]) + 1
        return None
