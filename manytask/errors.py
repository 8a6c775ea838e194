"""One base for every error a user can cause, so the command line prints each as one line, never a traceback.

Each part of manytask raises its own subclass (a bad config, bad data, a damaged bundle ...) that names the
file, line, field or request at fault; anything else that escapes is a bug in manytask and keeps its traceback.
"""

from __future__ import annotations


class ManytaskError(Exception):
    """A mistake in what the user gave (config, data, paths, requests); the message says what and where."""


class NotFound(ManytaskError, FileNotFoundError):
    """A run, bundle, ensemble, checkpoint or file that is not where the user said."""


class UnknownTask(ManytaskError, KeyError):
    """A task name the run, model or bundle does not have; ``str()`` is the message, not its repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ManytaskError, ValueError):
    """A config that cannot be used; the message names the file and the key."""
