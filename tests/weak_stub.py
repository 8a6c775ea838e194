"""User labeling functions for the tests (loaded by 'module:function')."""


def fine_is_positive(text: str, pair):
    return "1" if "fine" in text.split() else None


def votes_maybe(text: str, pair):
    return "maybe" if "dull" in text else None
