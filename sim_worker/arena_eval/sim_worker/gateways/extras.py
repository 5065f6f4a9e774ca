"""A gateway started without its optional dependency says which extra to install.

pyzmq and websockets come with the ``[gateway]`` extra, not with ``[sim]``: a sim node that
runs no gateway does not need them. A user who starts one anyway gets one line naming the
install command instead of a traceback from deep inside the gateway module.
"""

from __future__ import annotations

import importlib

from arena_eval.broker.errors import ConfigError

INSTALL = "pip install 'arena-eval[gateway]'"


def require(module: str, gateway: str) -> None:
    """Import ``module`` or raise ``ConfigError`` naming the extra that brings it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the {gateway} gateway needs {exc.name or module!r}, which is not installed: {INSTALL}"
        ) from None
