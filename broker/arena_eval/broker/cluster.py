"""Redis Cluster: detect it from the server, open redis-py's cluster client, route raw chains.

Why here: a user points every worker at *any* node of a cluster with a plain
``redis://host:port`` URL and expects it to work. So ``connection.connect``
asks the node itself (``INFO cluster`` -> ``cluster_enabled:1``) and, when it
is a cluster, returns redis-py's ``RedisCluster``, which routes each command
(and each pipeline, grouped by slot) to the master that owns its keys and
follows MOVED/ASK and failovers.

The fabric's hot path does not go through redis-py command by command: a
client writes ``XADD request`` + ``XREAD BLOCK reply`` in one write, and a
worker writes its replies, acknowledgements and next ``XREADGROUP BLOCK`` in
one write (``wire.execute_chain``). On a cluster those commands live on
different slots, so ``ClusterChain`` splits a chain by the node that owns each
command's slot, writes every node's part first, and then reads the parts back
-- the node holding a blocking read last -- so a chain still costs one round
trip however many nodes it touches. Commands of one node keep their order;
commands on different nodes are independent by construction (a reply stream
and a request stream never depend on each other within one chain).

A failover shows up as a dead socket, ``MOVED``, ``TRYAGAIN`` or
``CLUSTERDOWN``: the chain refreshes the slot map and raises a connection
error, which every caller already retries with backoff.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from arena_eval.broker import wire
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.wire import Arg, execute_chain

#: Replies that mean "the slot map you hold is stale": refresh it and retry the chain.
_TOPOLOGY_ERRORS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
#: Blocking commands: their node is read last, so the others' replies are not held up.
_BLOCKING = {"XREAD", "XREADGROUP"}
_PROBE_TIMEOUT_S = 2.0


def is_cluster(client: object) -> bool:
    """True for a client opened on a Redis Cluster (redis-py's ``RedisCluster``)."""
    return isinstance(client, RedisCluster)


def server_is_cluster(options: dict[str, Any]) -> bool | None:
    """Ask the node at ``options`` whether cluster mode is on (``INFO cluster``).

    A quick probe without retries. None when there is no answer (a node that does
    not answer, refused credentials, a user not allowed INFO): the caller treats it
    as a standalone server, whose client then reports the outage or the refusal in
    its own words, and asks again next time.
    """
    probe_options = {
        k: v for k, v in options.items() if k not in {"retry", "retry_on_error", "socket_timeout"}
    }
    probe_options["socket_connect_timeout"] = _PROBE_TIMEOUT_S
    probe_options["socket_timeout"] = _PROBE_TIMEOUT_S
    probe_options["retry"] = Retry(NoBackoff(), 0)
    pool = redis.ConnectionPool(**probe_options)
    probe = redis.Redis(connection_pool=pool)
    try:
        info = probe.info("cluster")
    except (RedisError, OSError, ArenaEvalError):  # refused credentials: the client says so
        return None
    finally:
        with contextlib.suppress(Exception):
            pool.disconnect()
    return bool(info.get("cluster_enabled"))


def open_cluster(options: dict[str, Any]) -> redis.Redis:
    """redis-py's cluster client with the fabric's connection options on every node.

    Typed as ``redis.Redis`` on purpose: ``RedisCluster`` offers the same
    command methods, and the few places that differ (raw chains) ask
    ``is_cluster`` first.
    """
    node_options = {k: v for k, v in options.items() if k not in {"db", "host", "port"}}
    retry = node_options.pop("retry", None)
    # Given as a URL so that redis-py builds each node's pool with our connection class
    # (zero-copy packing, fail-fast authentication) from ``node_options``.
    host, port = str(options.get("host", "127.0.0.1")), int(options.get("port", 6379))
    cluster = RedisCluster(
        url=f"redis://{host}:{port}" if not node_options.get("ssl") else f"rediss://{host}:{port}",
        retry=retry,
        require_full_coverage=True,
        **node_options,
    )
    return cast(redis.Redis, cluster)


def command_key(command: Sequence[Arg]) -> str | bytes:
    """The key that routes ``command``: after STREAMS for XREAD[GROUP], else the first argument."""
    name = str(command[0]).upper()
    if name in _BLOCKING:
        for i, arg in enumerate(command):
            if isinstance(arg, str) and arg.upper() == "STREAMS":
                return cast("str | bytes", command[i + 1])
    return cast("str | bytes", command[1])


def _topology_error(reply: object) -> bool:
    """A reply saying the slot map changed: redis-py names some (MOVED, CLUSTERDOWN...) by class
    and strips their code from the text; others keep the code as the first word."""
    if isinstance(reply, (ClusterDownError, MovedError, AskError, TryAgainError)):
        return True
    return isinstance(reply, ResponseError) and str(reply).split(" ", 1)[0] in _TOPOLOGY_ERRORS


class ClusterChain:
    """``execute_chain`` across a cluster: one connection per node, one round trip per chain.

    Connections are made lazily without redis-py's retries (the caller's loop
    retries within its own deadline); ``drop()`` closes them all and makes the
    next chain refresh the slot map first.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._cluster = cast(RedisCluster, client)
        self._conns: dict[str, AbstractConnection] = {}
        self._stale = False

    def run(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]:
        if self._stale:
            self._refresh()
        parts: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            parts.setdefault(self._node_name(command_key(command)), []).append(index)
        # the node that holds the last (blocking) command is read last
        order = sorted(parts, key=lambda name: parts[name][-1])
        replies: list[Any] = [None] * len(commands)
        if len(order) == 1:
            name = order[0]
            for index, reply in zip(
                parts[name],
                execute_chain(self._conn(name), commands, timeout_s=timeout_s),
                strict=True,
            ):
                replies[index] = reply
        else:
            sent: list[str] = []
            for name in order:
                conn = self._conn(name)
                wire.send_chain(conn, [commands[i] for i in parts[name]], timeout_s=timeout_s)
                sent.append(name)
            for name in sent:
                got = wire.read_chain(self._conns[name], len(parts[name]))
                for index, reply in zip(parts[name], got, strict=True):
                    replies[index] = reply
        for reply in replies:
            if _topology_error(reply):
                self.drop()
                raise RedisConnectionError(f"cluster topology changed ({reply}); retry")
        return replies

    def _node_name(self, key: str | bytes) -> str:
        slot = self._cluster.keyslot(key)
        node = self._cluster.nodes_manager.get_node_from_slot(slot)
        return str(node.name)

    def _conn(self, name: str) -> AbstractConnection:
        conn = self._conns.get(name)
        if conn is None:
            node = self._cluster.get_node(node_name=name)
            if node is None or node.redis_connection is None:
                raise RedisConnectionError(f"no connection to cluster node {name}")
            pool = node.redis_connection.connection_pool
            kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            conn = pool.connection_class(**kwargs)
            self._conns[name] = conn
        return conn

    def _refresh(self) -> None:
        try:
            self._cluster.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            raise RedisConnectionError(f"cannot refresh the cluster's slot map: {exc}") from None
        self._stale = False

    def drop(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.disconnect()
        self._conns.clear()
        self._stale = True

    release = drop


class RawClusterClient:
    """``execute_command`` on a cluster with replies unparsed (redis-py's callbacks skipped).

    What ``streams.raw_client`` gives on a cluster: XAUTOCLAIM's reply must be
    read raw (see ``streams``), and a cluster's per-node clients cannot be told
    to skip one callback. Commands go through a ``ClusterChain`` of its own.
    """

    response_callbacks: dict[str, Any] = {}

    def __init__(self, client: redis.Redis) -> None:
        self._chain = ClusterChain(client)

    def execute_command(self, *args: Any) -> Any:
        for attempt in range(2):
            try:
                (reply,) = self._chain.run([list(args)], timeout_s=_PROBE_TIMEOUT_S * 5)
            except (RedisConnectionError, OSError):
                self._chain.drop()
                if attempt:
                    raise
                continue
            if isinstance(reply, ResponseError):
                raise reply
            return reply
        raise RedisConnectionError("unreachable")  # pragma: no cover


def default_node_kwargs(client: redis.Redis) -> dict[str, Any]:
    """The connection settings of the node ``client`` was opened on (for host checks)."""
    node = cast(RedisCluster, client).get_default_node()
    if node is None or node.redis_connection is None:
        return {}
    return dict(node.redis_connection.connection_pool.connection_kwargs)


def mget(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
    """MGET of keys that may live on several slots (a cluster splits it by slot)."""
    if is_cluster(client):
        return list(cast(RedisCluster, client).mget_nonatomic(list(keys)))
    return list(client.mget(list(keys)))


def queue_script(pipe: Any, source: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue a Lua script on ``pipe``; on a cluster pipeline as EVAL (redis-py blocks EVALSHA
    there), routed by its keys, which must share one slot."""
    if isinstance(pipe, ClusterPipeline):
        pipe.execute_command("EVAL", source, len(keys), *keys, *args)
    else:
        pipe.register_script(source)(keys=list(keys), args=list(args))


def wait_for_replicas(client: redis.Redis, key: str, replicas: int, timeout_ms: int) -> int:
    """``WAIT replicas timeout_ms`` on the master of ``key``; the replicas that have our writes.

    WAIT counts the writes of the connection it runs on. redis-py hands a node's
    connections out last-in first-out, so in one thread this is the connection
    that just wrote; if another thread took it in between, WAIT returns early
    and ``reconcile`` remains the safety net.
    """
    cluster = cast(RedisCluster, client)
    node = cluster.get_node_from_key(key)
    return int(cluster.execute_command("WAIT", replicas, timeout_ms, target_nodes=node))
