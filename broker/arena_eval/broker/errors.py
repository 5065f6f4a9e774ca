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


class BrokerAuthError(ArenaEvalError):
    """Redis refused the credentials (wrong password, unknown user, none given).

    Not a ``BrokerUnavailable``: retrying cannot fix it, so nothing retries it.
    """


class BrokerPermissionError(ArenaEvalError):
    """Redis's ACL denied a command to the connected user (NOPERM).

    ``user`` is the Redis user that was denied and ``detail`` the server's reply, so
    the CLI can name the role a command needs next to them.
    """

    def __init__(self, message: str, *, user: str, detail: str) -> None:
        super().__init__(message)
        self.user = user
        self.detail = detail
