"""The registry of task kinds. A kind is one module in this package with a ``@register_kind`` class (see
``base.TaskKind``); every module here is imported on first use, so a new kind is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from manytask.errors import ManytaskError

if TYPE_CHECKING:
    from manytask.kinds.base import TaskKind

_KINDS: dict[str, "TaskKind"] = {}
_loaded = False


class UnknownKind(ManytaskError, ValueError):
    """A task kind no module registers."""


def register_kind(cls):
    """Class decorator: make ``cls`` (a TaskKind) the behaviour of tasks whose ``kind`` is ``cls.name``."""
    if cls.name in _KINDS and type(_KINDS[cls.name]) is not cls:
        raise ValueError(f"task kind {cls.name!r} registered twice ({type(_KINDS[cls.name]).__name__}, {cls.__name__})")
    _KINDS[cls.name] = cls()
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def get_kind(name: str) -> "TaskKind":
    _load()
    if name not in _KINDS:
        raise UnknownKind(f"unknown task kind {name!r} (known: {', '.join(kind_names())})")
    return _KINDS[name]


def kind_of(spec) -> "TaskKind":
    """The kind of a task spec (anything with a ``kind`` name)."""
    return get_kind(spec.kind)


def kind_names() -> list[str]:
    _load()
    return sorted(_KINDS)


def all_kinds() -> list["TaskKind"]:
    _load()
    return [_KINDS[n] for n in sorted(_KINDS)]
