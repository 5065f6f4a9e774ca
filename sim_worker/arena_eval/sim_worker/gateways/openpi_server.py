"""``arena-eval gateway openpi``: openpi's websocket policy protocol, answered by a pool.

An unmodified ``openpi_client.WebsocketClientPolicy`` (and its
``ActionChunkBroker``) connects here as it would to openpi's own
``WebsocketPolicyServer``: it reads one binary metadata frame, then sends one
unbatched observation per request and gets ``{actions (H, A), policy_timing,
server_timing}`` back, in openpi's msgpack-numpy (``openpi_codec``).

Why a gateway and not openpi's server: that server calls ``policy.infer`` on
its event loop, so its clients are served one at a time (openpi#717), and it
has no message cap (openpi#1043). Here every connection is its own session
into the pool (``core.Session``) and its request runs on the gateway's
threads, so the loop keeps reading other connections and their rows meet in
one forward pass of the pool; the websocket layer refuses frames over
``max_message_bytes`` before buffering them.

What openpi clients expect, kept exactly: ``GET /healthz`` answers 200
``OK``; an error sends the traceback as a text frame and closes with 1011
(the client raises RuntimeError with it). Added: ``/readyz`` (503 until a
policy worker serves the pool) and an optional token checked against the
``Authorization: Api-Key`` header the client can already send.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from arena_eval.broker.spec import PolicySpec
from arena_eval.sim_worker.gateways.core import GatewayCore, Session, token_ok
from arena_eval.sim_worker.gateways.openpi_codec import OpenpiDecodeError, packb, unpackb
from arena_eval.sim_worker.gateways.openpi_mapping import KeyMap, metadata_frame

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "OpenpiGateway", "OpenpiGatewayConfig"]

log = logging.getLogger("arena_eval.gateway.openpi")

#: Largest request frame accepted: four 512x512x3 cameras fit many times over (openpi#1043).
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
_CLOSE_REASON = "Internal server error. Traceback included in previous frame."
#: Called once the gateway listens (its ``port`` is then known).
OnReady = Callable[["OpenpiGateway"], None]


@dataclass(frozen=True)
class OpenpiGatewayConfig:
    """The websocket side of one openpi gateway (the pool side is ``core.GatewayConfig``)."""

    host: str = "0.0.0.0"
    #: 0 picks a free port (``OpenpiGateway.port`` tells which).
    port: int = 8000
    #: Frames larger than this close the connection with 1009 before they are buffered.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Added to the metadata frame built from the spec (``--metadata`` JSON).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    keymap: KeyMap = field(default_factory=KeyMap)
    #: When set, the ``Authorization: Api-Key <token>`` header must carry it (401 otherwise).
    api_token: str | None = None


class OpenpiGateway:
    """Serve openpi websocket clients from ``core``'s pool until ``stop()``."""

    def __init__(self, core: GatewayCore, config: OpenpiGatewayConfig) -> None:
        self.core = core
        self.config = config
        self.port: int | None = None
        self._spec: PolicySpec | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------
    def run(self, on_ready: OnReady | None = None) -> None:
        """Serve until SIGTERM/SIGINT (blocking); ``on_ready(gateway)`` once listening."""
        asyncio.run(self.serve(on_ready, install_signals=True))

    async def serve(
        self, on_ready: OnReady | None = None, *, install_signals: bool = False
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        async with serve(
            self._handler,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=self.config.max_message_bytes,
            process_request=self._process_request,
        ) as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            self.core.start()
            try:
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
            finally:
                server.close()
                await asyncio.to_thread(self.core.stop)

    def stop(self) -> None:
        """Ask a running ``serve`` to return (safe from any thread)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    # -- HTTP paths ------------------------------------------------------------------
    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if request.path == "/readyz":
            if await asyncio.to_thread(self.core.ready):
                return connection.respond(http.HTTPStatus.OK, "OK\n")
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"no live policy worker serves pool {self.core.config.pool}\n",
            )
        if self.config.api_token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme != "Api-Key" or not token_ok(self.config.api_token, value.strip()):
                self.core.errors += 1
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "Unauthorized: give the gateway's token as WebsocketClientPolicy(api_key=)\n",
                )
        return None

    # -- one connection --------------------------------------------------------------
    async def _spec_now(self) -> PolicySpec:
        if self._spec is None:
            spec = await self.core.call(self.core.spec)
            self.config.keymap.check_against(spec)
            self._spec = spec
        return self._spec

    async def _handler(self, ws: ServerConnection) -> None:
        key = f"ws-{uuid.uuid4().hex[:12]}"
        session = self.core.session(key)
        log.info("openpi connection %s from %s", key, ws.remote_address)
        try:
            spec = await self._spec_now()
            await ws.send(packb(metadata_frame(spec, self.config.metadata)))
            prev_total_ms: float | None = None
            while True:
                frame = await ws.recv()
                start = time.monotonic()
                reply = await self._answer(session, spec, frame, prev_total_ms)
                await ws.send(packb(reply))
                prev_total_ms = (time.monotonic() - start) * 1e3
        except websockets.ConnectionClosed:
            log.info("openpi connection %s closed", key)
        except Exception:
            self.core.errors += 1
            text = traceback.format_exc()
            log.warning("openpi connection %s: %s", key, text.strip().splitlines()[-1])
            try:
                await ws.send(text)
                await ws.close(CloseCode.INTERNAL_ERROR, _CLOSE_REASON)
            except websockets.ConnectionClosed:
                pass
        finally:
            self.core.drop(key)

    async def _answer(
        self, session: Session, spec: PolicySpec, frame: str | bytes, prev_total_ms: float | None
    ) -> dict[str, Any]:
        if isinstance(frame, str):
            raise OpenpiDecodeError("a text frame; openpi requests are binary msgpack frames")
        row = self.config.keymap.to_row(unpackb(frame), spec)
        t0 = time.perf_counter()
        actions, infos = await self.core.call(
            functools.partial(session.infer, row.obs, instructions=row.instruction)
        )
        infer_ms = (time.perf_counter() - t0) * 1e3
        timing = session.last_timing  # the pool's split: its forward pass and batch size
        reply: dict[str, Any] = dict(infos[0]) if infos else {}
        reply["actions"] = np.asarray(actions[0])
        reply["policy_timing"] = {
            "infer_ms": float(timing.get("infer_ms", infer_ms)),
            "batch_rows": int(timing.get("batch_rows", 1)),
        }
        reply["server_timing"] = {"infer_ms": infer_ms}
        if prev_total_ms is not None:
            reply["server_timing"]["prev_total_ms"] = prev_total_ms
        return reply
