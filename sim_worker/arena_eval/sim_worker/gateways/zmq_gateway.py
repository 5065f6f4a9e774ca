"""``arena-eval gateway zmq``: GR00T and IsaacLab-Arena ZeroMQ clients, served by a pool.

Why one ROUTER socket: a ROUTER sees a REQ peer's message as ``[identity, b"",
payload]`` and a DEALER peer's the same way (Arena v2 sends ``[b"",
payload]``), so GR00T's REQ client, the seed's Arena v1 REQ client and Arena
v2's DEALER client all connect to one port, each under its own identity, and
each identity is one session (``core.Session``: its own PolicyClient and reply
stream). Those peers' servers answer one request at a time; here the socket
thread only moves frames. Each request is decoded and answered on the
gateway's thread pool, where it waits for the pool together with the other
sessions' requests -- that is where cross-client batching comes from. A
finished reply is queued and the socket thread is woken through an inproc
socket to send it (ZeroMQ sockets belong to one thread).

Bounds against a client that floods: a message over ``max_message_bytes``
(``zmq.MAXMSGSIZE``) drops its connection before it is read; arrays are
loaded only after the token check; and an identity has at most one request
pending -- a second one sent before the first is answered gets an error reply
with source ``busy`` at once, instead of a thread of the pool waiting on its
session (the peers' clients wait for each answer, so only a misbehaving one
sees it).

Endpoints: ``ping``, ``get_init_info`` (Arena's handshake: the client is then
of the Arena family, whose ``get_action`` reply is ``{"action": chunk}``;
without it a client is GR00T's, whose reply is ``[{"action": chunk}, info]``),
``get_action``, ``reset``, ``set_task_description`` (every row's instruction
from then on), ``get_modality_config``, ``disconnect``, and ``kill``, which is
rejected: stopping the gateway is the process owner's signal. Every failure
is one error reply ``{"error", "must_reconnect", "source"}``; none stops the
gateway. The client's whole batch goes to the pool, even the rows whose env
still has actions left in its buffer (the seed's client sends all envs): the
gateway cannot know which rows will be used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import zmq

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.signals import stop_on_signals
from arena_eval.broker.spec import PolicySpec
from arena_eval.sim_worker.gateways import zmq_codec
from arena_eval.sim_worker.gateways.core import (
    GatewayCore,
    GatewayError,
    error_reply,
    token_ok,
)

log = logging.getLogger("arena_eval.gateway")

Handler = Callable[[str, dict[str, Any]], Any]
_POLL_MS = 200


class ZmqEndpoints:
    """Decode one request, run its endpoint for its session, encode the reply (never raises)."""

    def __init__(self, core: GatewayCore, token: str | None) -> None:
        self.core = core
        self._token = token
        self._handlers: dict[str, Handler] = {
            "ping": self.ping, "get_init_info": self.get_init_info,
            "get_action": self.get_action, "reset": self.reset,
            "set_task_description": self.set_task_description,
            "get_modality_config": self.get_modality_config,
            "disconnect": self.disconnect, "kill": self.kill,
        }  # fmt: skip

    def handle(self, key: str, payload: bytes) -> bytes:
        """The encoded reply to one request from the client ``key`` (its identity in hex)."""
        try:
            reply = self._dispatch(key, payload)
        except Exception as exc:
            self.core.errors += 1
            reply = error_reply(exc)
            log.info("request from %s refused: %s (%s)", key[:8], reply["error"], reply["source"])
        try:
            return zmq_codec.encode(reply)
        except Exception as exc:  # a policy info the wire cannot carry
            self.core.errors += 1
            return zmq_codec.encode(error_reply(GatewayError(str(exc), source="reply_encode")))

    def _dispatch(self, key: str, payload: bytes) -> Any:
        msg = zmq_codec.decode_envelope(payload)  # no array is loaded before the token check
        if not token_ok(self._token, msg.get("api_token")):
            raise GatewayError("Unauthorized: Invalid API token", source="auth")
        endpoint = msg.get("endpoint")
        handler = self._handlers.get(endpoint) if isinstance(endpoint, str) else None
        if handler is None:
            raise GatewayError(
                f"unknown endpoint {endpoint!r}; this gateway serves {sorted(self._handlers)}",
                source="endpoint",
            )
        data = zmq_codec.decode_data(msg.get("data") or {})
        if not isinstance(data, dict):
            raise GatewayError(
                f"malformed message: 'data' must be a map, not {type(data).__name__}",
                source="request_decode",
            )
        return handler(key, data)

    # -- endpoints ------------------------------------------------------------------
    def ping(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "message": f"arena-eval gateway for pool {self.core.config.pool}"}

    def get_init_info(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        mode = data.get("requested_action_mode", "chunk")
        if mode != "chunk":
            raise GatewayError(
                f"action mode {mode!r} is not served: pool {self.core.config.pool!r} returns "
                "action chunks; request 'chunk'",
                source="spec",
            )
        spec = self.core.spec()
        session = self.core.session(key)
        session.family = "arena"
        reply: dict[str, Any] = {
            "action_mode": "chunk", "action_dim": spec.action_dim,
            "action_chunk_length": spec.chunk_length,
            "observation_keys": sorted(spec.observations or {}),
        }  # fmt: skip
        if "num_envs" in data:  # Arena v2: per-client state and negotiated fields
            session.num_envs = int(data["num_envs"])
            reply.update(
                num_envs=session.num_envs, zmq_identity=bytes.fromhex(key),
                negotiated_transport="zmq", negotiated_compression="none",
                negotiated_zmq_compression="none", negotiated_tensor_compression="none",
            )  # fmt: skip
        return reply

    def get_action(self, key: str, data: dict[str, Any]) -> Any:
        observation = data.get("observation")
        if not isinstance(observation, dict):
            raise GatewayError(
                "get_action needs data.observation: a map of arrays", source="request_decode"
            )
        session = self.core.session(key)
        arrays, texts = flatten_observation(observation)
        obs = _select(arrays, session.pool_spec())
        actions, infos = session.infer(obs, instructions=_one_or_all(texts))
        if session.family == "arena":
            return {"action": actions}
        return [{"action": actions}, {"infos": infos} if infos is not None else {}]

    def reset(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        env_ids = data.get("env_ids")
        if env_ids is not None and not isinstance(env_ids, list | np.ndarray):
            raise GatewayError("reset: env_ids must be a list of ints", source="request_decode")
        self.core.session(key).reset(None if env_ids is None else [int(e) for e in env_ids])
        return {"status": "reset_success"}

    def set_task_description(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        text = data.get("task_description", data.get("text"))
        if not isinstance(text, str):
            raise GatewayError(
                "set_task_description needs data.task_description: a string",
                source="request_decode",
            )
        self.core.session(key).instruction = text
        return {"status": "ok", "task_description": text}

    def get_modality_config(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        return modality_configs(self.core.spec())

    def disconnect(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        self.core.drop(key)
        return {"status": "disconnected"}

    def kill(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        log.warning("kill from %s rejected: stop the gateway with a signal", key[:8])
        return {"status": "rejected", "reason": "remote kill disabled"}


def flatten_observation(
    observation: dict[str, Any], prefix: str = ""
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays by dotted key (GR00T nests ``{"video": {"ego_view": ...}}``) and the text rows."""
    arrays: dict[str, np.ndarray] = {}
    texts: list[str] = []
    for k, v in observation.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            more, more_texts = flatten_observation(v, f"{name}.")
            arrays.update(more)
            texts = texts or more_texts
        elif isinstance(v, np.ndarray) and v.dtype.kind in "US":
            texts = texts or [str(t) for t in v.reshape(-1)]
        elif isinstance(v, np.ndarray):
            arrays[name] = v
        elif isinstance(v, str):
            texts = texts or [v]
        elif isinstance(v, list | tuple) and all(isinstance(t, str | list) for t in v):
            texts = texts or [str(t[0] if isinstance(t, list) and t else t) for t in v]
        elif isinstance(v, zmq_codec.Blob):
            raise GatewayError(
                f"observation {name!r} is a {v.mime!r} blob; send arrays (np.save bytes)",
                source="spec",
            )
        elif v is not None:
            raise GatewayError(
                f"observation {name!r} is a {type(v).__name__}; send arrays or text", source="spec"
            )
    return arrays, texts


def _one_or_all(texts: list[str]) -> str | list[str]:
    return texts[0] if len(texts) == 1 else texts if texts else ""


def _select(arrays: dict[str, np.ndarray], spec: PolicySpec) -> dict[str, np.ndarray]:
    """The spec's keys only (clients send more than a pool needs); missing keys stay missing."""
    if spec.observations is None:
        return arrays
    return {k: arrays[k] for k in spec.observations if k in arrays} or arrays


def modality_configs(spec: PolicySpec) -> dict[str, Any]:
    """GR00T's ``get_modality_config`` from the spec: one group per key prefix, plus action."""
    groups: dict[str, list[str]] = {}
    for key in sorted(spec.observations or {}):
        group = key.split(".", 1)[0] if "." in key else "state"
        groups.setdefault(group, []).append(key)
    out = {g: zmq_codec.modality_config([0], keys) for g, keys in groups.items()}
    out["action"] = zmq_codec.modality_config(list(range(spec.chunk_length)), ["action"])
    if spec.needs_instruction:
        out["language"] = zmq_codec.modality_config([0], ["instruction"])
    return out


class ZmqGateway:
    """The socket thread: ROUTER in, requests to the thread pool, replies back out."""

    def __init__(self, core: GatewayCore, bind: str, token: str | None) -> None:
        self.core = core
        self.bind = bind
        self.endpoints = ZmqEndpoints(core, token)
        self._replies: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
        #: Identities with a request in the pool (touched by the socket thread only).
        self._pending: set[bytes] = set()
        self._wake_lock = threading.Lock()
        self._closed = False  # under _wake_lock: _push is closed, _post sends nothing
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._wake_addr = f"inproc://gateway-wake-{uuid.uuid4().hex}"
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, core.config.max_message_bytes)
        try:
            self._router.bind(bind)
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            raise ConfigError(
                f"cannot bind {bind}: {exc}. Is another server on that port? "
                "Pick another with --bind tcp://0.0.0.0:PORT"
            ) from None
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(self._wake_addr)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.connect(self._wake_addr)

    @property
    def address(self) -> str:
        """The bound endpoint (the real port when bound to port 0 / ``*``)."""
        return str(self._router.getsockopt_string(zmq.LAST_ENDPOINT))

    def stop(self) -> None:
        """Ask ``serve`` to return (from any thread or a signal handler)."""
        self._stop.set()

    def serve(self) -> None:
        """Move frames until ``stop``; then close the sockets."""
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(_POLL_MS))
                if self._router in ready:
                    self._read_requests()
                if self._pull in ready:
                    self._send_replies()
        finally:
            with self._wake_lock:  # no executor thread is inside _push.send now or later
                self._closed = True
                self._push.close(linger=0)
            self._ctx.destroy(linger=0)

    def _read_requests(self) -> None:
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            if len(frames) == 3 and frames[1] == b"":
                envelope, payload = [identity, b""], frames[2]
            elif len(frames) == 2:
                envelope, payload = [identity], frames[1]
            else:
                envelope = [identity, b""] if len(frames) > 1 and frames[1] == b"" else [identity]
                bad = GatewayError(
                    f"malformed message: {len(frames) - 1} frames; send one msgpack frame",
                    source="request_decode",
                )
                self._router.send_multipart([*envelope, zmq_codec.encode(error_reply(bad))])
                continue
            if identity in self._pending:
                busy = GatewayError(
                    "busy: this client already has a request pending; wait for its reply "
                    "before sending the next",
                    source="busy",
                )
                self.core.errors += 1
                self._router.send_multipart([*envelope, zmq_codec.encode(error_reply(busy))])
                continue
            self._pending.add(identity)
            future = self.core.submit(self.endpoints.handle, identity.hex(), payload)
            future.add_done_callback(functools.partial(self._post, envelope))

    def _post(self, envelope: list[bytes], future: Future[bytes]) -> None:
        try:
            reply = future.result()
        except BaseException as exc:  # cancelled at shutdown, or a bug: still answer
            reply = zmq_codec.encode(error_reply(exc))
        self._replies.put([*envelope, reply])
        with self._wake_lock, contextlib.suppress(zmq.ZMQError):  # the pipe is full: woken
            if not self._closed:
                self._push.send(b"", zmq.NOBLOCK)

    def _send_replies(self) -> None:
        while True:
            try:
                self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while True:
            try:
                frames = self._replies.get_nowait()
            except queue.Empty:
                return
            self._pending.discard(frames[0])
            try:
                self._router.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the peer left; its reply has nowhere to go
                log.info("reply to %s dropped: %s", frames[0].hex()[:8], exc)


def run_zmq_gateway(
    core: GatewayCore,
    bind: str,
    token: str | None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Bind, register in the fleet, serve until SIGTERM/SIGINT/SIGHUP, deregister."""
    gateway = ZmqGateway(core, bind, token)
    core.start()
    try:
        with stop_on_signals(gateway.stop, "gateway"):
            if on_ready is not None:
                on_ready(gateway.address)
            gateway.serve()
    finally:
        core.stop()
