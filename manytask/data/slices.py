"""Slicing functions: which examples of a task belong to each of its slices (MeTaL, slice-based learning).

Built-in predicates look at the raw text (regex, word lists, length, counts); ``module:function`` runs a
user's own predicate. Each function is applied once per example and remembered by the example's id and a hash
of its text for the life of the process (a file whose text changed under the same line numbers is judged
again); a function that raises names the slice and the example.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

from manytask.config import ConfigError, SliceFunction, SlicesConfig
from manytask.hooks import load_hook
from manytask.io import text_sha256
from manytask.records import Example

_MEMO: dict[tuple[str, str, str], bool] = {}


class SliceError(ConfigError):
    """A slicing function that cannot be applied; the message names the slice and the example."""


def _texts(fn: SliceFunction, e: Example) -> list[str]:
    if fn.fields == "text":
        return [e.text_a]
    if fn.fields == "text_pair":
        return [e.text_b or ""]
    return [e.text_a] + ([e.text_b] if e.text_b else [])


# MeTaL's person-pronoun groups (glue slices for RTE): a premise that names more than one of them
PERSON_GROUPS = ({"she", "her", "hers"}, {"he", "him", "his"}, {"you", "your", "yours"}, {"i", "my", "me", "mine"})


def metal_more_people(text: str, pair: Optional[str]) -> bool:
    """MeTaL's ``more_people``: the first sentence uses more than one distinct person-pronoun group
    (she/her/hers, he/him/his, you/your/yours, I/my/me/mine). 12 of RTE's 277 dev pairs."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return sum(1 for group in PERSON_GROUPS if group & words) > 1


def metal_dash_semicolon(text: str, pair: Optional[str]) -> bool:
    """MeTaL's ``dash_semicolon``: a dash or a semicolon anywhere in the pair. 116 of RTE's 277 dev pairs."""
    return bool(re.search(r"[-;]", text + " " + (pair or "")))


BUILTIN: dict[str, Callable[[str, Optional[str]], bool]] = {
    "metal_more_people": metal_more_people,
    "metal_dash_semicolon": metal_dash_semicolon,
}


def predicate(fn: SliceFunction) -> Callable[[Example], bool]:
    if fn.kind == "builtin":
        if fn.builtin not in BUILTIN:
            raise SliceError(f"slice {fn.name!r}: no built-in slicing function {fn.builtin!r} "
                             f"(built in: {', '.join(BUILTIN)})")
        builtin = BUILTIN[fn.builtin]  # type: ignore[index]
        return lambda e: builtin(e.text_a, e.text_b)
    if fn.kind == "function":
        user = load_hook(fn.function, f"slice {fn.name!r}", SliceError)  # type: ignore[arg-type]
        return lambda e: bool(user(e.text_a, e.text_b))
    if fn.kind in ("regex", "count"):
        pattern = re.compile(fn.pattern)  # type: ignore[arg-type]
        need = 1 if fn.kind == "regex" else fn.n
        return lambda e: sum(len(pattern.findall(t)) for t in _texts(fn, e)) >= need
    if fn.kind == "contains_any":
        words = {w.lower() for w in fn.words or []}
        return lambda e: any(w.lower().strip(".,;:!?\"'()") in words for t in _texts(fn, e) for w in t.split())
    lo, hi = fn.min if fn.min is not None else 0, fn.max if fn.max is not None else 10 ** 9
    return lambda e: lo <= sum(len(t.split()) for t in _texts(fn, e)) <= hi


def membership(cfg: SlicesConfig, examples: Sequence[Example]) -> dict[str, list[bool]]:
    """Slice name -> member or not, per example."""
    out = {}
    for fn in cfg.functions:
        test = predicate(fn)
        key = fn.model_dump_json()
        flags = []
        for e in examples:
            memo = (key, e.id, text_sha256(e.text_a, e.text_b))
            if memo not in _MEMO:
                try:
                    _MEMO[memo] = bool(test(e))
                except Exception as err:
                    raise SliceError(f"slice {fn.name!r} failed on example {e.id}: {type(err).__name__}: {err}") from None
            flags.append(_MEMO[memo])
        out[fn.name] = flags
    return out
