"""Every Redis key arena-eval uses is built here, and nowhere else.

One module, one prefix (``arena:`` by default, ``ARENA_PREFIX`` to change it),
so a ``redis-cli`` user can read the whole layout from this file and several
deployments can share one server. Names in ``{braces}`` are Redis Cluster hash
tags: all keys of one pool, one job or one client land on the same slot, while
different pools, jobs and clients spread over the shards.

The layout, with a redis-cli example for each kind of key, is documented in
``docs/architecture.md``; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.settings import DEFAULT_PREFIX

_FORBIDDEN = set("{}:\r\n\t *?[]")


def check_name(kind: str, name: str) -> str:
    """Validate a user-chosen name (pool, job, worker) so it is safe inside a key."""
    if not name or len(name) > 128 or any(c in _FORBIDDEN for c in name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use 1-128 characters without spaces, "
            "':', braces, wildcards or control characters (e.g. 'gr1-pool')"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """Key builder bound to one prefix.

    Size: one method per key family, by design: this class is the one place a reader
    finds every key, its type and its hash tag.
    """

    prefix: str = DEFAULT_PREFIX

    # -- model pools --------------------------------------------------------
    def pools(self) -> str:
        """SET of pool names that have ever registered."""
        return f"{self.prefix}pools"

    def pool_spec(self, pool: str) -> str:
        """STRING (JSON): the pool's PolicySpec, written by its first worker."""
        return f"{self.prefix}pool:{{{check_name('pool', pool)}}}:spec"

    def pool_requests(self, pool: str) -> str:
        """STREAM of inference requests, read by the POLICY_GROUP consumer group."""
        return f"{self.prefix}pool:{{{check_name('pool', pool)}}}:requests"

    def pool_host_requests(self, pool: str, host_id: str) -> str:
        """STREAM of shared-memory tickets for the pool's workers on one host (same group)."""
        host = check_name("host", host_id)
        return f"{self.prefix}pool:{{{check_name('pool', pool)}}}:requests:{host}"

    def pool_dead(self, pool: str) -> str:
        """STREAM of dead letters: requests that could not be served, with the reason."""
        return f"{self.prefix}pool:{{{check_name('pool', pool)}}}:dead"

    def pool_workers(self, pool: str) -> str:
        """SET of worker ids that joined the pool (liveness is the heartbeat key)."""
        return f"{self.prefix}pool:{{{check_name('pool', pool)}}}:workers"

    def pool_worker(self, pool: str, worker_id: str) -> str:
        """STRING (JSON) with a TTL: one policy worker's heartbeat and counters."""
        return f"{self.prefix}pool:{{{check_name('pool', pool)}}}:worker:{worker_id}"

    # -- clients --------------------------------------------------------------
    def reply_stream(self, client_id: str) -> str:
        """STREAM of replies for one PolicyClient; deleted when the client closes."""
        return f"{self.prefix}client:{{{check_name('client', client_id)}}}:replies"

    def is_reply_stream(self, key: str) -> bool:
        """True only for keys shaped like ``reply_stream(some valid client id)``.

        Workers write (XADD, EXPIRE) to the reply key named in a request; anyone
        who can write a request must not be able to make them touch other keys.
        """
        return self.reply_stream_client(key) is not None

    def reply_stream_client(self, key: str) -> str | None:
        """The client id of a key shaped like ``reply_stream(id)``, else None."""
        head, tail = f"{self.prefix}client:{{", "}:replies"
        if not (key.startswith(head) and key.endswith(tail)):
            return None
        client_id = key[len(head) : -len(tail)]
        valid = (
            bool(client_id)
            and len(client_id) <= 128
            and not any(c in _FORBIDDEN for c in client_id)
        )
        return client_id if valid else None

    def rollout_obs(self, client_id: str, rollout: str, seq: int) -> str:
        """STRING with a TTL: the payload of large request ``seq`` of one rollout (the pool
        stream carries its key as a ticket; the worker that answers deletes it). Tagged by
        client and rollout, so a fleet's bytes spread over the shards of a cluster."""
        owner = check_name("client", client_id)
        name = check_name("rollout", rollout)
        if "@" in owner or "@" in name:
            raise ConfigError(f"client and rollout names may not hold '@': {owner!r}, {name!r}")
        return f"{self.prefix}rollout:{{{owner}@{name}}}:obs:{int(seq)}"

    def rollout_obs_client(self, key: str) -> str | None:
        """The client id a ``rollout_obs`` key belongs to, or None if ``key`` is not one.

        Neither part holds an '@' (host names cannot): the owner is what precedes it.
        Workers read only keys of this shape, and only their requester's.
        """
        head = f"{self.prefix}rollout:{{"
        body, sep, seq = key[len(head) :].rpartition("}:obs:")
        if not key.startswith(head) or not sep or not seq.isdigit() or len(seq) > 20:
            return None
        owner, at, rollout = body.partition("@")
        if not at or not owner or not rollout:
            return None
        if any(c in _FORBIDDEN or c == "@" for c in owner + rollout) or len(owner) > 128:
            return None
        return owner

    # -- benchmark only (benchmarks/inline_paths.py, under its private prefix) --------------
    def bench_blob(self, client_id: str, rid: str) -> str:
        """STRING holding one request's payload: the blob route ``inline_paths`` compares."""
        return f"{self.prefix}blob:{{{client_id}}}:{rid}"

    def bench_obs_stream(self, client_id: str) -> str:
        """STREAM of one client's large requests: the rollout-stream route it compares."""
        return f"{self.prefix}rollout:{{{client_id}}}:obs"

    # -- jobs -----------------------------------------------------------------
    def jobs(self) -> str:
        """ZSET of job ids scored by submit time."""
        return f"{self.prefix}jobs"

    def job(self, job_id: str) -> str:
        """HASH: the job's spec (JSON), state, reason and timestamps."""
        return f"{self.prefix}job:{{{check_name('job', job_id)}}}"

    def job_results(self, job_id: str) -> str:
        """HASH episode index -> result (JSON); written once per episode with HSETNX."""
        return f"{self.prefix}job:{{{check_name('job', job_id)}}}:results"

    def job_stats(self, job_id: str) -> str:
        """HASH of counters (steps, policy time) and a step-latency histogram."""
        return f"{self.prefix}job:{{{check_name('job', job_id)}}}:stats"

    def job_workers(self, job_id: str) -> str:
        """HASH worker id -> last time it worked on the job."""
        return f"{self.prefix}job:{{{check_name('job', job_id)}}}:workers"

    def job_reconcile(self, job_id: str) -> str:
        """STRING with a TTL: held (SET NX) by the sim worker re-queuing lost episodes."""
        return f"{self.prefix}job:{{{check_name('job', job_id)}}}:reconcile"

    def units(self) -> str:
        """STREAM of work units (shards of episodes of any job), read by SIM_GROUP."""
        return f"{self.prefix}units"

    # -- sim workers ----------------------------------------------------------
    def sim_workers(self) -> str:
        """SET of sim worker ids (liveness is the heartbeat key)."""
        return f"{self.prefix}sim-workers"

    def sim_worker(self, worker_id: str) -> str:
        """STRING (JSON) with a TTL: one sim worker's heartbeat and current unit."""
        return f"{self.prefix}sim-worker:{check_name('worker', worker_id)}"
