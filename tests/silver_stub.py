"""A stand-in for spaCy in the tests: tags each whitespace word LONG (over 4 characters) or SHORT, and
counts its calls."""

import re

CALLS = {"texts": 0}


def caps_tagger(texts: list[str]) -> list[list[tuple[int, int, str]]]:
    CALLS["texts"] += len(texts)
    return [[(m.start(), m.end(), "LONG" if len(m.group()) > 4 else "SHORT") for m in re.finditer(r"\S+", t)]
            for t in texts]
