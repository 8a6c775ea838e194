"""ELECTRA's discriminator: BERT's layout, with ``embeddings_project`` when the embedding size differs from the
hidden size, and no pooler."""

from __future__ import annotations

from manytask.encoders import register_encoder
from manytask.encoders.bert import BertAdapter


@register_encoder
class ElectraAdapter(BertAdapter):
    model_types = ("electra",)
    family = "ELECTRA"
    has_pooler = False

    @classmethod
    def model_kwargs(cls, pooler: bool) -> dict:
        return {}

    @property
    def pooler(self):
        return None

    def embed(self, input_ids, token_type_ids, attention_mask):
        hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        project = getattr(self.model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def depth(self, name):
        return 0 if name.startswith("embeddings_project.") else super().depth(name)
