"""One error hierarchy for the whole fabric.

Every exception a user can see derives from ``ArenaEvalError`` so that the CLI
can catch one type, print its message and exit non-zero. Each message says what
happened *and* what to do next; the small, specific errors live next to the
code that raises them and subclass one of these.
"""

from __future__ import annotations


class ArenaEvalError(Exception):
    """Root of every error arena-eval raises on purpose."""


class ConfigError(ArenaEvalError):
    """A setting, URL or argument is invalid."""


class BrokerUnavailable(ArenaEvalError):
    """Redis could not be reached (within the retry budget)."""


class CodecError(ArenaEvalError):
    """A message could not be encoded or decoded. The reason is in the text."""
