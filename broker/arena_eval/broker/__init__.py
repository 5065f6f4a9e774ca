"""The broker layer: Redis settings, key names, the message codec and stream primitives.

It imports neither torch nor gymnasium, so that every process, sim node or
policy node, can use it.
"""

from arena_eval.broker.errors import ArenaEvalError, BrokerUnavailable, CodecError, ConfigError

__all__ = ["ArenaEvalError", "BrokerUnavailable", "CodecError", "ConfigError"]
