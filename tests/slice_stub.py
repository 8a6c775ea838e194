"""User slicing functions for the tests (loaded by 'module:function')."""


def has_good(text: str, pair) -> bool:
    return "good" in text.split()


def explodes(text: str, pair) -> bool:
    if "grim" in f"{text} {pair or ''}":
        raise RuntimeError("cannot judge grim texts")
    return False
