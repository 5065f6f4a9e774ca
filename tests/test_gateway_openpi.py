"""``arena-eval gateway openpi``: openpi's websocket protocol answered by a pool.

The headline test runs the real ``openpi-client`` from PyPI, unmodified, in a
venv of its own (it pins numpy<2), against the gateway started through the
CLI: ``WebsocketClientPolicy`` and ``ActionChunkBroker`` from several client
processes at once, the metadata frame, actions row for row against the pool
policy, ``/healthz`` and ``/readyz``, and batching across the connections.
The other tests drive an in-process gateway with a plain websocket client to
pin down the protocol's edges: the error text frame and close 1011, the
message cap (openpi#1043), a token, /readyz before the pool exists, and the
codec's refusals.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from arena_eval.benchmarks import openpi_venv
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import describe_pool
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import SpecMismatch
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.gateways.core import GatewayConfig, GatewayCore
from arena_eval.sim_worker.gateways.openpi_codec import OpenpiDecodeError, packb, unpackb
from arena_eval.sim_worker.gateways.openpi_mapping import KeyMap
from arena_eval.sim_worker.gateways.openpi_server import OpenpiGateway, OpenpiGatewayConfig
from tests.openpi_policies import HORIZON, LiberoLike, expected_chunks
from tests.worker_procs import procs, wait_until

POOL = "libero"
KEYS = ("observation/image=image", "observation/state=state")
SCRIPT = Path(__file__).with_name("openpi_client_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class ThreadWorker:
    def __init__(self, settings: RedisSettings, latency_ms: float = 0.0) -> None:
        self.worker = PolicyWorker(
            POOL, LiberoLike(latency_ms), settings, max_wait_ms=2.0, max_batch=64
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> PolicyWorker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(10)


class ThreadGateway:
    """An in-process gateway on a free port, served by its own event loop thread."""

    def __init__(self, settings: RedisSettings, **config: Any) -> None:
        self.core = GatewayCore(
            GatewayConfig(pool=POOL, protocol="openpi", address="ws://test", timeout_s=10.0,
                          redis=settings)
        )  # fmt: skip
        config.setdefault("keymap", KeyMap.build(KEYS))
        self.gateway = OpenpiGateway(
            self.core, OpenpiGatewayConfig(host="127.0.0.1", port=0, **config)
        )
        self.ready = threading.Event()
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.gateway.serve(lambda _g: self.ready.set())),
            daemon=True,
        )

    def __enter__(self) -> ThreadGateway:
        self.thread.start()
        assert self.ready.wait(10), "gateway did not start"
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}"

    @property
    def port(self) -> int:
        assert self.gateway.port is not None
        return self.gateway.port

    def __exit__(self, *exc: object) -> None:
        self.gateway.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "gateway did not stop"


def _obs(seed: int, step: int, prompt: str = "open the drawer") -> dict[str, Any]:
    return {
        "observation/image": np.full((8, 8, 3), (seed * 7 + step) % 200, np.uint8),
        "observation/state": np.arange(8, dtype=np.float64) + seed + 0.25 * step,
        "prompt": prompt,
    }


def _expected(seed: int, step: int, prompt: str) -> np.ndarray:
    """The (H, A) chunk LiberoLike answers for the client script's observation (seed, step)."""
    state = (np.arange(8, dtype=np.float64) + seed + 0.25 * step).astype(np.float32)[None]
    image = np.array([float((seed * 7 + step) % 200)])
    return expected_chunks(state, image, np.array([float(len(prompt))]))[0]


# -- the real openpi-client, unmodified --------------------------------------------------
@pytest.fixture(scope="module")
def venv() -> openpi_venv.OpenpiVenv:
    try:
        return openpi_venv.ensure()
    except openpi_venv.VenvUnavailable as exc:
        pytest.skip(f"no venv with openpi-client could be built here: {exc}")


@pytest.mark.slow
def test_real_openpi_clients_through_gateway(
    settings: RedisSettings, r: redis.Redis, tmp_path: Path, venv: openpi_venv.OpenpiVenv
) -> None:
    port = _free_port()
    clients, steps = 4, 4 * HORIZON
    prompts = [f"put the bowl {'on the plate' * (i + 1)}" for i in range(clients)]
    with procs(settings, tmp_path) as p:
        gateway = p.cli(
            "gateway", "openpi", "--pool", POOL, "--host", "127.0.0.1", "--port", str(port),
            "--key", KEYS[0], "--key", KEYS[1], "--metadata", '{"robot": "test-arm"}',
            name="gateway",
        )  # fmt: skip
        wait_until(lambda: _get(port, "/healthz")[0] == 200, 30, "gateway /healthz", [gateway])
        assert _get(port, "/readyz")[0] == 503, "ready before any policy worker serves the pool"
        with ThreadWorker(settings, latency_ms=40.0):
            wait_until(lambda: _get(port, "/readyz")[0] == 200, 20, "/readyz", [gateway])
            start_at = str(time.time() + 3.0)  # every client connected by then, even on a busy CI
            argv = [str(venv.python), str(SCRIPT), str(port)]
            runs = [
                subprocess.Popen(
                    [*argv, str(i), str(steps), prompts[i], start_at],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(clients)
            ]
            outs = [run.communicate(timeout=120) for run in runs]
            for run, (_out, err) in zip(runs, outs, strict=True):
                assert run.returncode == 0, f"openpi client failed:\n{err}\n{p.log_of(gateway)}"
            pool = wait_until(
                lambda: _mean_batch(r, settings), 10, "the pool's stats to show the batches"
            )
        assert gateway.poll() is None, p.log_of(gateway)

    for i, (out, _err) in enumerate(outs):
        result = json.loads(out)
        meta = result["metadata"]
        assert meta["action_horizon"] == HORIZON and meta["action_dim"] == 7
        assert meta["robot"] == "test-arm" and meta["needs_instruction"] is True
        got = np.array(result["actions"], np.float32)
        assert got.shape == (steps, 7)
        for step in range(steps):
            start = step - step % HORIZON  # ActionChunkBroker asked at the chunk's first step
            want = _expected(i, start, prompts[i])[step - start]
            np.testing.assert_allclose(got[step], want, rtol=1e-6, err_msg=f"client {i} {step}")
        assert {"actions", "policy_timing", "server_timing"} <= set(result["direct_keys"])
        assert result["direct_shape"] == [HORIZON, 7] and result["direct_dtype"] == "float32"
        assert set(result["server_timing"]) == {"infer_ms", "prev_total_ms"}
        assert result["policy_timing"]["infer_ms"] >= 40.0 * 0.9  # the pool's forward pass
        assert result["server_timing"]["infer_ms"] >= result["policy_timing"]["infer_ms"]
        assert result["healthz"] == [200, "OK\n"]
        assert result["readyz"][0] == 200
    # four clients at once, a 40 ms forward pass: their rows met in shared batches
    assert pool > 1.0, f"mean batch {pool}: the connections were served one at a time"


def _mean_batch(r: redis.Redis, settings: RedisSettings) -> float:
    workers = describe_pool(r, Keys(settings.prefix), POOL)["workers"]
    rows = sum(int(w["rows"]) for w in workers)
    return float(workers[0]["mean_batch_rows"]) if workers and rows >= 20 else 0.0


# -- protocol edges, with an in-process gateway ------------------------------------------------
def test_metadata_reply_and_timing(settings: RedisSettings) -> None:
    with (
        ThreadWorker(settings),
        ThreadGateway(settings, metadata={"robot": "x"}) as gw,
        websockets.sync.client.connect(gw.url, compression=None, max_size=None) as ws,
    ):
        meta = unpackb(ws.recv())
        assert meta["action_horizon"] == HORIZON and meta["robot"] == "x"
        for step in range(3):
            reply = unpackb(_ask(ws, _obs(2, step)))
            np.testing.assert_allclose(reply["actions"], _expected(2, step, "open the drawer"))
            assert ("prev_total_ms" in reply["server_timing"]) == (step > 0)


def _ask(ws: Any, obs: dict[str, Any]) -> Any:
    ws.send(packb(obs))
    return ws.recv()


def test_error_is_a_text_frame_then_close_1011_and_the_gateway_keeps_serving(
    settings: RedisSettings,
) -> None:
    with ThreadWorker(settings), ThreadGateway(settings) as gw:
        bad = _obs(0, 0)
        bad["observation/state"] = np.zeros(5)  # the spec says 8
        cases: list[Any] = [packb(bad), b"\xc1garbage", "a text request", packb({"x": 1})]
        for frame in cases:
            with websockets.sync.client.connect(gw.url, max_size=None) as ws:
                ws.recv()
                ws.send(frame)
                text = ws.recv()
                assert isinstance(text, str) and "Traceback" in text, text
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert "shape [5], pool 'libero-like' expects float32[8]" in _first_error(gw, packb(bad))
        with websockets.sync.client.connect(gw.url, max_size=None) as ws:
            ws.recv()
            assert unpackb(_ask(ws, _obs(1, 1)))["actions"].shape == (HORIZON, 7)


def _first_error(gw: ThreadGateway, frame: bytes) -> str:
    with websockets.sync.client.connect(gw.url, max_size=None) as ws:
        ws.recv()
        ws.send(frame)
        text = ws.recv()
        assert isinstance(text, str)
        return text


def test_message_cap_closes_with_1009_and_keeps_serving(settings: RedisSettings) -> None:
    with ThreadWorker(settings), ThreadGateway(settings, max_message_bytes=4096) as gw:
        with websockets.sync.client.connect(gw.url, max_size=None) as ws:
            ws.recv()
            huge = _obs(0, 0)
            huge["extra"] = np.zeros(10_000, np.uint8)
            ws.send(packb(huge))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        with websockets.sync.client.connect(gw.url, max_size=None) as ws:
            ws.recv()
            assert unpackb(_ask(ws, _obs(0, 0)))["actions"].shape == (HORIZON, 7)


def test_readyz_before_the_pool_and_healthz_always(settings: RedisSettings) -> None:
    with ThreadGateway(settings) as gw:
        assert _get(gw.port, "/healthz") == (200, "OK\n")
        status, body = _get(gw.port, "/readyz")
        assert status == 503 and POOL in body
        with ThreadWorker(settings):
            wait_until(lambda: _get(gw.port, "/readyz")[0] == 200, 10, "/readyz")


def test_token_from_the_api_key_header(settings: RedisSettings) -> None:
    with ThreadWorker(settings), ThreadGateway(settings, api_token="s3cret") as gw:
        with pytest.raises(websockets.exceptions.InvalidStatus) as denied:
            websockets.sync.client.connect(gw.url)
        assert denied.value.response.status_code == 401
        with pytest.raises(websockets.exceptions.InvalidStatus):
            websockets.sync.client.connect(
                gw.url, additional_headers={"Authorization": "Api-Key no"}
            )
        header = {"Authorization": "Api-Key s3cret"}
        with websockets.sync.client.connect(gw.url, additional_headers=header) as ws:
            ws.recv()
            assert unpackb(_ask(ws, _obs(0, 0)))["actions"].shape == (HORIZON, 7)
        assert _get(gw.port, "/healthz")[0] == 200  # probes need no token


# -- codec and key map, no server ----------------------------------------------------------------
def _nd(arr: np.ndarray, **override: Any) -> dict[bytes, Any]:
    d = {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}
    d.update({k.encode(): v for k, v in override.items()})
    return d


def test_codec_reads_openpi_frames_and_refuses_unsafe_ones() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = msgpack.packb(
        {"a": _nd(arr), "s": {b"__npgeneric__": True, b"data": 3, b"dtype": "<i8"}}
    )
    out = unpackb(frame)
    np.testing.assert_array_equal(out["a"], arr)
    assert not out["a"].flags.writeable  # zero-copy view of the frame
    assert out["s"] == np.int64(3) and isinstance(out["s"], np.int64)
    for dtype in ("|O", "<c8", "|V4"):
        with pytest.raises(OpenpiDecodeError, match="refused"):
            unpackb(msgpack.packb({"a": _nd(np.zeros(4, np.uint8), dtype=dtype)}))
    with pytest.raises(OpenpiDecodeError, match="needs 48 bytes"):
        unpackb(msgpack.packb({"a": _nd(arr, data=b"\0" * 47)}))
    with pytest.raises(OpenpiDecodeError, match="not an openpi msgpack frame"):
        unpackb(b"\xc1")
    back = msgpack.unpackb(packb({"actions": arr, "n": np.float32(1.5)}))
    assert back["actions"][b"dtype"] == "<f4" and back["actions"][b"shape"] == [3, 4]
    assert back["n"] == {b"__npgeneric__": True, b"data": 1.5, b"dtype": "<f4"}


def test_key_map() -> None:
    spec = LiberoLike().spec()
    km = KeyMap.build(KEYS)
    row = km.to_row(_obs(1, 2, "stack"), spec)
    assert row.instruction == "stack"
    assert row.obs["state"].dtype == np.float32 and row.obs["state"].shape == (1, 8)
    assert row.obs["image"].shape == (1, 8, 8, 3)
    nested = {"observation": {"image": np.zeros((8, 8, 3), np.uint8), "state": np.zeros(8)}}
    assert set(km.to_row(nested, spec).obs) == {"image", "state"}  # flattened to observation/...
    with pytest.raises(SpecMismatch, match="--key observation/image=SPEC_KEY"):
        KeyMap.build([]).to_row(_obs(0, 0), spec)
    float_image = {**_obs(0, 0), "observation/image": np.zeros((8, 8, 3), np.float32)}
    with pytest.raises(SpecMismatch, match="cannot become the pool's uint8"):
        km.to_row(float_image, spec)
    ignored = KeyMap.build([*KEYS, "extra=@ignore"]).to_row({**_obs(0, 0), "extra": "x"}, spec)
    assert set(ignored.obs) == {"image", "state"}
    with pytest.raises(ConfigError, match="has no observation 'wrist'"):
        KeyMap.build(["a=wrist"]).check_against(spec)
    with pytest.raises(ConfigError, match="OPENPI_KEY=SPEC_KEY"):
        KeyMap.build(["nonsense"])


def test_key_map_file(tmp_path: Path) -> None:
    lines = tmp_path / "map.txt"
    lines.write_text("# LIBERO\nobservation/image = image\nobservation/state=state\n")
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps(dict(k.split("=") for k in KEYS)))
    for path in (lines, as_json):
        assert KeyMap.build([], path).pairs == {
            **dict(k.split("=") for k in KEYS),
            "prompt": "@instruction",
        }


def test_cli_default_cap_matches_the_server() -> None:
    from arena_eval.cli import gateway_openpi_cmd
    from arena_eval.sim_worker.gateways import openpi_server

    assert gateway_openpi_cmd._DEFAULT_MAX_MESSAGE_BYTES == openpi_server.DEFAULT_MAX_MESSAGE_BYTES
