"""A gateway's ``/readyz`` condition: the pool's spec can be read now.

Why the spec and not a session: a gateway builds its sessions lazily, on a
client's first request, so nothing in it is "loaded" before traffic comes. What
it cannot serve without is the pool's spec (the shapes it checks and maps
requests against), which exists once a policy worker has served the pool. The
check reads it through ``GatewayCore.spec`` with no wait, so a probe never blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from arena_eval.broker.errors import ArenaEvalError
from arena_eval.sim_worker.gateways.core import GatewayCore

__all__ = ["spec_check"]


def spec_check(core: GatewayCore) -> Callable[[], tuple[bool, str]]:
    """(True, "ok") once ``core``'s pool has a spec; else (False, why) in one line."""

    def check() -> tuple[bool, str]:
        try:
            core.spec(timeout_s=0)
        except ArenaEvalError as exc:
            return False, f"pool spec not loaded: {exc}"
        return True, "ok"

    return check
