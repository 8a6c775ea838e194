"""User code a config names as ``module:function`` (slicing and labeling functions, taggers): loaded one way,
with one error that names what could not be loaded and why."""

from __future__ import annotations

import importlib
from typing import Callable

from manytask.errors import ConfigError


def load_hook(ref: str, what: str, error: type[Exception] = ConfigError) -> Callable:
    """The callable ``ref`` (``module:function``) names; ``error(f"{what}: ...")`` when it cannot be loaded."""
    module, _, name = ref.partition(":")
    if not module or not name:
        raise error(f"{what}: {ref!r} is not of the form module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise error(f"{what}: cannot load {ref!r} ({e})") from None
    if not callable(fn):
        raise error(f"{what}: {ref!r} is not callable")
    return fn
