"""The ``--metrics-port`` endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread.

Why a thread and the standard library: the endpoint must not change how a
worker runs. ``wsgiref`` with one thread per request serves the few scrapes a
minute a Prometheus sends, next to the serve loop, with no new dependency and
no event loop to share; ``prometheus_client.make_wsgi_app`` renders the
process's own ``CollectorRegistry`` (never the global default, so an imported
library's metrics do not leak in and two registries in one test process do not
collide).

* ``/metrics``: Prometheus text (every ``arena_`` metric of the process, and
  ``arena_build_info``).
* ``/healthz``: 200 while the process's main thread -- the serve loop -- is
  alive; 503 once it has ended (the process is on its way out).
* ``/readyz``: 200 only when Redis answers a PING now *and* the process has
  what it needs to serve (``telemetry.readiness``: the model, the env, the
  pool's spec); else 503 with one line saying which is missing.

The port binds to loopback unless ``--metrics-host`` says otherwise: metrics
name pools and jobs, and an operator opens them to a network on purpose.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from arena_eval.broker import telemetry
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.redis_probe import RedisProbe, package_version
from arena_eval.broker.settings import RedisSettings

__all__ = ["BuildInfo", "MetricsEndpoint", "serve_process_metrics"]

log = logging.getLogger("arena_eval.metrics")

#: A check: (ok, one line for the body).
Check = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]


def main_thread_alive() -> tuple[bool, str]:
    alive = threading.main_thread().is_alive()
    return alive, "ok" if alive else "the main loop has ended"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class MetricsEndpoint:
    """``/metrics`` for ``registry``, ``/healthz`` for ``live``, ``/readyz`` for ``ready``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Check,
        live: Check = main_thread_alive,
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._live = live
        self._server: _Server | None = None
        self.address: tuple[str, int] = ("", 0)

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind ``host:port`` (ConfigError, one line, if it cannot) and serve on a daemon thread."""
        try:
            server = make_server(
                host, port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick a free "
                "--metrics-port (0 turns metrics off)"
            ) from None
        self._server = server  # type: ignore[assignment]
        self.address = (host, int(server.server_address[1]))
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path in ("/healthz", "/readyz"):
            ok, text = (self._live if path == "/healthz" else self._ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            return _text(start_response, status, text)
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz")


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    data = (text + "\n").encode("utf-8")
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


class BuildInfo(Collector):
    """``arena_build_info{version, role, redis_kind, redis_version} 1``."""

    def __init__(self, role: str, probe: RedisProbe) -> None:
        self._role = role
        self._probe = probe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        kind, version = self._probe.server_info()
        info = GaugeMetricFamily(
            "arena_build_info",
            "arena-eval version, process role and the Redis server it talks to.",
            labels=["version", "role", "redis_kind", "redis_version"],
        )
        info.add_metric([package_version(), self._role, kind, version], 1.0)
        yield info


def ready_when(probe: RedisProbe, *others: Check) -> Check:
    """A readiness check: Redis answers, then every one of ``others`` says ok."""

    def check() -> tuple[bool, str]:
        for one in (*others, probe.check):
            ok, why = one()
            if not ok:
                return False, why
        return True, "ok"

    return check


def serve_process_metrics(
    role: str,
    settings: RedisSettings,
    *,
    port: int,
    host: str = "127.0.0.1",
    pool: str = "",
    needs: tuple[str, ...] = (),
    checks: tuple[Check, ...] = (),
) -> MetricsEndpoint | None:
    """Turn recording on and serve this worker's endpoint (None when ``port`` is 0: off).

    ``needs`` are what ``/readyz`` waits for besides Redis (``telemetry.ready`` marks them);
    ``checks`` are asked at each probe (a gateway's: its pool's spec can be read).
    """
    if not port:
        return None
    rec = telemetry.enable(role, pool=pool, needs=needs)
    probe = RedisProbe(settings)
    rec.registry.register(BuildInfo(role, probe))
    endpoint = MetricsEndpoint(rec.registry, ready=ready_when(probe, telemetry.readiness, *checks))
    endpoint.start(host, port)
    return endpoint
