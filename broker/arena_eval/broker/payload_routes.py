"""Raw commands of the large-request routes that ``benchmarks/inline_paths.py`` compares.

Why here: stream commands are built only in ``broker/`` (tests/test_code_shape.py), and
the benchmark must send the very commands a route would use, through the product's
zero-copy writer (``wire.Parts`` in ``wire.execute_chain``). Four routes for one request:

* **inline**: the payload is field ``d`` of the pool-stream entry (``transport.request_command``);
* **blob**: ``SET <blob> <payload> PX ttl`` and a ticket naming the key, in one write; the
  worker takes the blob with ``GETDEL``;
* **rollout stream**: ``XADD <obs stream> <id> d <payload>`` with an id the client picks, and
  a ticket ``<key>|<id>``; the worker reads it with ``XRANGE key id id``, deletes it with
  its reply;
* **chunks**: the payload split over several fields of one pool-stream entry.

The keys are the benchmark's own (under its private prefix, on its own server):
``Keys.bench_blob`` and ``Keys.bench_obs_stream``; the product's route is ``Keys.rollout_obs``.
"""

from __future__ import annotations

from collections.abc import Sequence

from arena_eval.broker.constants import F_REPLY, F_RID, REQUEST_STREAM_MAXLEN
from arena_eval.broker.wire import Arg

#: Field names of the tickets (the inline payload keeps the product's ``d``).
F_BLOB = b"blob"
F_OBS = b"obs"
F_CHUNKS = b"nchunks"
OBS_MAXLEN = 4


def ticket_command(
    stream: str, rid: str, reply_key: str, fields: Sequence[tuple[bytes, Arg]]
) -> list[Arg]:
    """XADD a request entry with the routing fields and ``fields`` (a ticket or chunks)."""
    cmd: list[Arg] = ["XADD", stream, "MAXLEN", "~", REQUEST_STREAM_MAXLEN, "*",
                      F_RID, rid, F_REPLY, reply_key]  # fmt: skip
    for name, value in fields:
        cmd += [name, value]
    return cmd


def chunk_field(i: int) -> bytes:
    return b"c%d" % i


def blob_set_command(key: str, value: Arg, ttl_ms: int) -> list[Arg]:
    return ["SET", key, value, "PX", ttl_ms]


def blob_take_command(key: str) -> list[Arg]:
    return ["GETDEL", key]


def obs_add_command(key: str, entry_id: str, value: Arg) -> list[Arg]:
    """XADD the payload under an id the client chose (the ticket names it in the same write)."""
    return ["XADD", key, "MAXLEN", "~", OBS_MAXLEN, entry_id, b"d", value]


def obs_read_command(key: str, entry_id: bytes | str) -> list[Arg]:
    return ["XRANGE", key, entry_id, entry_id]


def obs_delete_command(key: str, entry_id: bytes | str) -> list[Arg]:
    return ["XDEL", key, entry_id]
