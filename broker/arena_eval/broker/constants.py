"""Every wire-protocol constant in one short module: field names, groups, caps and TTLs.

Why one place (arq keeps its constants.py for the same reason): the sim's
client, the policy worker, the work-unit queue and the admin commands all read
and write the same streams; a field name or a cap that two of them spell
differently is a silent protocol break. Keys themselves are built in
``keys.py``; what goes *into* those keys is named here. ``transport.py`` builds
the commands that use these values.
"""

from __future__ import annotations

__all__ = [
    "DEAD_ENTRY_MAX_BYTES",
    "DEAD_FIELD_NAME_MAX_BYTES",
    "DEAD_MAX_ORIG_FIELDS",
    "DEAD_PAYLOAD_KEEP_BYTES",
    "DEAD_PAYLOAD_MAX_BYTES",
    "DEAD_REASON_MAX_CHARS",
    "DEAD_STREAM_MAXLEN",
    "DEAD_STREAM_MAX_BYTES",
    "F_COUNT",
    "F_DATA",
    "F_JOB",
    "F_OBS",
    "F_REPLY",
    "F_RID",
    "F_SHM",
    "F_START",
    "KIND_ACTIONS",
    "KIND_ERROR",
    "KIND_INFER",
    "OBS_BLOB_TTL_MS",
    "POLICY_GROUP",
    "REPLY_READ_COUNT",
    "REPLY_STREAM_MAXLEN",
    "REPLY_STREAM_TTL_S",
    "REQUEST_STREAM_MAXLEN",
    "SIM_GROUP",
]

# -- consumer groups -------------------------------------------------------------------------
#: Policy workers on a pool's request streams (``Keys.pool_requests``, host streams).
POLICY_GROUP = "policy-workers"
#: Sim workers on the work-unit stream (``Keys.units``).
SIM_GROUP = "sim-workers"

# -- request entries (a pool's request stream) ---------------------------------------------
#: Request id; the client drops any reply whose rid it is not awaiting.
F_RID = b"rid"
#: The requester's reply stream key.
F_REPLY = b"reply"
#: The codec-encoded message, inline (requests and replies).
F_DATA = b"d"
#: A shared-memory ticket instead of ``d`` (same-host fast path, see ``shm.py``).
F_SHM = b"shm"
#: A blob ticket instead of ``d``: the key of the STRING that holds the payload
#: (``Keys.rollout_obs``: tagged by rollout, so a pool's bytes spread over a cluster's shards).
F_OBS = b"obs"

# -- message kinds (inside the codec payload) ------------------------------------------------
KIND_INFER = "infer"
KIND_ACTIONS = "actions"
KIND_ERROR = "error"

# -- work-unit entries (the units stream) ---------------------------------------------------
F_JOB = "job"
F_START = "start"
F_COUNT = "count"

# -- caps and TTLs ---------------------------------------------------------------------------
#: Safety cap on a pool's request stream (approximate trim); answered entries are deleted.
REQUEST_STREAM_MAXLEN = 10_000
#: Cap on a client's reply stream (approximate trim); the client reads as replies arrive.
REPLY_STREAM_MAXLEN = 64
#: A reply stream expires this long after its last reply (a client that died leaves none).
REPLY_STREAM_TTL_S = 600
#: TTL of a request's payload blob; the worker that answers deletes it at once, the TTL only
#: bounds what a request nobody answers leaves behind.
OBS_BLOB_TTL_MS = 600_000
#: Most replies one client read takes off its reply stream.
REPLY_READ_COUNT = 16

# Dead letters are bounded in bytes, per pool: at most DEAD_STREAM_MAXLEN entries
# (exact trimming), each at most about DEAD_ENTRY_MAX_BYTES, so a pool's dead-letter
# stream holds at most DEAD_STREAM_MAX_BYTES of field data whatever is thrown at it.
DEAD_STREAM_MAXLEN = 1000
#: Original field values above this are kept as their first DEAD_PAYLOAD_KEEP_BYTES.
DEAD_PAYLOAD_MAX_BYTES = 4 << 10
DEAD_PAYLOAD_KEEP_BYTES = 4 << 10
#: At most this many original fields are copied (a request has 3: rid, reply, d or shm).
DEAD_MAX_ORIG_FIELDS = 4
DEAD_FIELD_NAME_MAX_BYTES = 64
DEAD_REASON_MAX_CHARS = 1000
#: Upper bound of one dead letter's field names and values (reason, routing, originals).
DEAD_ENTRY_MAX_BYTES = (
    DEAD_MAX_ORIG_FIELDS * (DEAD_PAYLOAD_MAX_BYTES + 2 * DEAD_FIELD_NAME_MAX_BYTES + 40)
    + 4 * DEAD_REASON_MAX_CHARS  # the reason, UTF-8
    + 1024  # worker id, stream, entry id, timestamps, field names
)
DEAD_STREAM_MAX_BYTES = DEAD_STREAM_MAXLEN * DEAD_ENTRY_MAX_BYTES
