"""The connection a command chain is written on: one socket, or one per cluster node.

Why a module of its own: the sim client and the policy worker write their
chains (``wire.execute_chain``) without caring where the keys live. On one
server a chain is one write on one dedicated socket (``wire.DedicatedConnection``);
on a cluster it is split by slot owner (``cluster.ClusterChain``). Both offer
``run(commands, timeout_s=)``, ``drop()`` and ``release()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis

from arena_eval.broker.cluster import ClusterChain, is_cluster
from arena_eval.broker.wire import Arg, DedicatedConnection


class ChainConnection(Protocol):
    def run(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]: ...

    def drop(self) -> None: ...

    def release(self) -> None: ...


def open_chain(client: redis.Redis) -> ChainConnection:
    """A chain connection with ``client``'s settings (cluster-aware)."""
    if is_cluster(client):
        return ClusterChain(client)
    return DedicatedConnection(client)
