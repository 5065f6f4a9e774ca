"""Where a request's bytes travel: shared memory, a blob keyed by rollout, or inline.

Why apart from ``PolicyClient``: choosing the route is a policy of its own,
measured (docs/architecture.md, "The request path" and "Large requests"), and
it owns state the round trip does not: the shared-memory slots, whether a
worker of the pool runs on this host, and the rollout that names the blobs.

* **Shared memory** when a worker of the pool runs on this host and the request
  is large (``SHM_MIN_BYTES``): a ticket in the host's request stream.
* **A blob** (a STRING with a TTL, ``Keys.rollout_obs``) for other large
  requests: the query buffer becomes the value, so Redis copies nothing into a
  stream listpack, and its hash tag is the rollout's, so a cluster spreads a
  pool's bytes over its shards. The pool stream carries the blob's key.
* **Inline** in the pool stream for small requests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import redis

from arena_eval.broker import shm, shm_trust, transport
from arena_eval.broker.cluster import is_cluster
from arena_eval.broker.constants import F_DATA, F_OBS, F_SHM
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.wire import Arg, Parts

#: Requests at least this large use shared memory when a local worker exists.
SHM_MIN_BYTES = 64 * 1024
#: Blobs for large requests without shared memory: ``on`` (default) or ``off``.
ENV_BLOBS = "ARENA_BLOBS"
#: Requests of at least this many bytes travel as blobs when blobs are on.
ENV_BLOB_MIN_BYTES = "ARENA_BLOB_MIN_BYTES"
BLOB_MIN_BYTES = 64 * 1024
_ROUTE_REFRESH_S = 1.0
_SLOTS = 2


class PayloadRoute:
    """One client's route choice for each request, and the state behind it."""

    def __init__(
        self, r: redis.Redis, keys: Keys, pool: str, client_id: str, transport_name: str
    ) -> None:
        self._r = r
        self.keys = keys
        self.pool = pool
        self.client_id = client_id
        self.transport = transport_name
        self.request_stream = keys.pool_requests(pool)
        self._host_id = shm_trust.host_id()
        self.host_stream = keys.pool_host_requests(pool, self._host_id)
        self._slots: list[shm.SlotWriter] = []
        self._slot_turn = 0
        self._route_checked = 0.0
        self._local_worker = False
        self._blobs = _blob_mode()
        self._blob_min_bytes = _blob_min_bytes()
        self._rollout = "0"
        self._blob_seq = 0
        #: The route of the last request: ``shm``, ``blob`` or ``inline``.
        self.last = ""
        #: On a cluster a blob and its ticket may live on two nodes: the blob goes first.
        self.blob_first = is_cluster(r)

    def note_workers(self, workers: Sequence[Any]) -> None:
        self._local_worker = any(w.host_id == self._host_id for w in workers)
        self._route_checked = time.monotonic()

    def local_alive(self) -> bool:
        self.note_workers(live_workers(self._r, self.keys, self.pool))
        return self._local_worker

    def _use_shm(self, nbytes: int) -> bool:
        if self.transport == "redis" or not shm_trust.available():
            return False
        if self.transport == "shm":
            return True
        if nbytes < SHM_MIN_BYTES:
            return False
        if time.monotonic() - self._route_checked > _ROUTE_REFRESH_S:
            self.note_workers(live_workers(self._r, self.keys, self.pool))
        return self._local_worker

    def begin_rollout(self, name: str) -> None:
        self.keys.rollout_obs(self.client_id, name, 0)  # validates the name
        self._rollout = name

    def choose(self, parts: list[Any], nbytes: int) -> tuple[bytes, Arg, str]:
        """(field name, value, stream): a shm ticket, a blob's bytes (``obs``: stored by
        ``blob_commands`` at send time), or the inline bytes."""
        if self._use_shm(nbytes):
            if not self._slots:
                self._slots = [shm.SlotWriter(self.client_id, i) for i in range(_SLOTS)]
            slot = self._slots[self._slot_turn % _SLOTS]
            self._slot_turn += 1
            ticket = slot.write(parts, nbytes)
            self.last = "shm"
            return (F_SHM, ticket.to_wire(), self.host_stream)
        return self.inline_or_blob(parts, nbytes)

    def inline_or_blob(self, parts: list[Any], nbytes: int) -> tuple[bytes, Arg, str]:
        blob = self._blobs and nbytes >= self._blob_min_bytes
        self.last = "blob" if blob else "inline"
        return (F_OBS if blob else F_DATA, Parts(parts, nbytes), self.request_stream)

    def blob_commands(self, value: Arg) -> tuple[list[list[Arg]], str]:
        """The commands that store a payload as a new blob, and the ticket to send."""
        self._blob_seq += 1
        key = self.keys.rollout_obs(self.client_id, self._rollout, self._blob_seq)
        return transport.obs_commands(key, value), key

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []


def _blob_mode() -> bool:
    mode = os.environ.get(ENV_BLOBS, "on").strip().lower()
    if mode not in ("on", "off"):
        raise ArenaEvalError(f"{ENV_BLOBS} must be on or off, not {mode!r}")
    return mode == "on"


def _blob_min_bytes() -> int:
    raw = os.environ.get(ENV_BLOB_MIN_BYTES, "")
    return int(raw) if raw.isdigit() else BLOB_MIN_BYTES
