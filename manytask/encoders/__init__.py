"""Encoder architectures behind one adapter interface (``base.EncoderAdapter``), found by the model's
``config.model_type``. Every module in this package is imported on first use, so a family is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from manytask.encoders.base import EncoderAdapter

_ADAPTERS: dict[str, type["EncoderAdapter"]] = {}
_loaded = False
# families refused with a reason (not just "unsupported")
REFUSED = {"albert": "ALBERT shares one layer's weights across every depth, and manytask's branches are copies of "
                     "layers of their own: use BERT, RoBERTa, ELECTRA, DeBERTa or ModernBERT"}


def register_encoder(cls):
    """Class decorator: ``cls`` adapts models whose ``config.model_type`` is one of ``cls.model_types``."""
    for t in cls.model_types:
        _ADAPTERS[t] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for info in pkgutil.iter_modules(__path__):
            if info.name not in ("base", "loading"):
                importlib.import_module(f"{__name__}.{info.name}")


def supported() -> list[str]:
    _load()
    return sorted(_ADAPTERS)


def adapter_class(config) -> type["EncoderAdapter"]:
    """The adapter class for a transformers config; a clear error naming the supported families otherwise."""
    from manytask.encoders.base import EncoderError

    _load()
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise EncoderError(f"encoder architecture {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in _ADAPTERS:
        raise EncoderError(f"encoder architecture {model_type!r} is not supported (supported: "
                           f"{', '.join(supported())}); pass an encoder of one of these families")
    return _ADAPTERS[model_type]


def adapter_for(model) -> "EncoderAdapter":
    return adapter_class(model.config)(model)
