"""``arena-eval gateway zmq``: peers' ZeroMQ clients served by a real pool, through the CLI.

The clients (``tests/zmq_peer_clients.py``) are written from the peers' protocol
facts, not taken from our code: a REQ client (GR00T, Arena v1) and a DEALER client
(Arena v2). Everything runs as real processes on real Redis: a policy worker,
the gateway, and Meta-World for the episode.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
import zmq

from arena_eval.broker.fleet import live_gateways, live_sim_workers
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings
from tests.worker_procs import REPO, Procs, child_env, procs, wait_until
from tests.zmq_peer_clients import DIM, PeerClient, echo_actions, pack, unpack

TOKEN_ENV = "ARENA_TEST_GATEWAY_TOKEN"
TOKEN = "s3cret-gateway-token"
SLOW_ECHO = "tests.zmq_peer_clients:SlowEchoPolicy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_gateway(
    p: Procs, r: redis.Redis, keys: Keys, pool: str, *extra: str, token: bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = ["gateway", "zmq", "--pool", pool, "--bind", f"tcp://127.0.0.1:{port}", *extra]
    env = {TOKEN_ENV: TOKEN} if token else {}
    if token:
        args += ["--api-token-env", TOKEN_ENV]
    gw = p.cli(*args, name="gateway", **env)
    wait_until(lambda: live_gateways(r, keys, pool), 30, "the gateway's fleet record", [gw])
    return gw, f"tcp://127.0.0.1:{port}"


def cli_json(settings: RedisSettings, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", *args, "--json"],
        cwd=REPO, env=child_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_metaworld_episode(client: PeerClient, family: str, seed: int) -> tuple[bool, int]:
    """One reach-v3 episode driven by the pool's expert through the gateway."""
    warnings.filterwarnings("ignore")
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the envs)

    env = gym.make("Meta-World/MT1", env_name="reach-v3", seed=seed)
    obs, _ = env.reset(seed=seed)
    if family == "arena":
        info = client.call("get_init_info", requested_action_mode="chunk", num_envs=1)
        assert info["action_mode"] == "chunk" and info["num_envs"] == 1, info
        assert info["action_dim"] == 4 and info["observation_keys"] == ["state"], info
        assert client.call("set_task_description", task_description="reach the goal") == {
            "status": "ok", "task_description": "reach the goal",
        }  # fmt: skip
    assert client.call("reset", env_ids=[0])["status"] == "reset_success"
    for step in range(200):
        reply = client.call("get_action", observation={"state": obs[None]})
        assert "error" not in (reply if isinstance(reply, dict) else {}), reply
        if family == "arena":
            chunk = reply["action"]
        else:  # GR00T: [action, info]
            assert isinstance(reply, list) and len(reply) == 2, reply
            chunk = reply[0]["action"]
        assert chunk.shape == (1, 1, 4) and chunk.dtype == np.float32
        obs, _, term, trunc, step_info = env.step(chunk[0, 0])
        if step_info["success"]:
            return True, step
        if term or trunc:
            break
    return False, step


def test_req_and_dealer_clients_run_metaworld_through_the_gateway(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    pool = "mw"
    with procs(settings, tmp_path) as p:
        worker = p.cli("policy", "serve", "--pool", pool, "--policy", "metaworld-expert",
                       "--policy-arg", "task=reach-v3", name="expert")  # fmt: skip
        wait_until(lambda: live_workers(r, keys, pool), 60, "the expert", [worker])
        gw, address = start_gateway(p, r, keys, pool)
        req = PeerClient(address, kind="req", token=TOKEN)
        dealer = PeerClient(address, kind="dealer", token=TOKEN)
        results: dict[str, tuple[bool, int]] = {}
        t = threading.Thread(target=lambda: results.update(arena=run_metaworld_episode(
            dealer, "arena", seed=5)))  # fmt: skip
        t.start()
        results["gr00t"] = run_metaworld_episode(req, "gr00t", seed=3)
        t.join(120)
        assert results["gr00t"][0], results
        assert results["arena"][0], results

        # listed by `workers` and `pools`, and not counted as a sim worker
        assert not live_sim_workers(r, keys)
        steps = results["gr00t"][1] + results["arena"][1] + 2  # both episodes' get_action calls

        def listed() -> Any:
            (record,) = cli_json(settings, "workers")["gateways"]
            return record if record["requests"] >= steps else None

        record = wait_until(listed, 10, "the gateway's record to count the requests")
        assert isinstance(record, dict)
        assert record["protocol"] == "zmq" and record["pool"] == pool
        assert record["address"] == address and record["sessions"] == 2
        pools = cli_json(settings, "pools")
        (mw,) = pools["pools"]
        assert [g["address"] for g in mw["gateways"]] == [address]
        for command, needle in (("workers", "gateways"), ("pools", "gateway zmq on")):
            text = subprocess.run(
                [sys.executable, "-m", "arena_eval.cli", command], cwd=REPO,
                env=child_env(settings, COLUMNS="200"), capture_output=True, text=True, timeout=60,
            ).stdout  # fmt: skip
            assert needle in text and address in text, text

        # errors: each gets one error reply and the gateway keeps serving
        bad = PeerClient(address, kind="req", token="wrong-token")
        reply = bad.call("ping")
        assert reply["error"] == "Unauthorized: Invalid API token" and reply["source"] == "auth"
        reply = req.send_raw(pickle.dumps({"endpoint": "ping", "data": {}}))
        assert reply["source"] == "pickle" and "never unpickles" in reply["error"], reply
        reply = req.send_raw(b"\xc1 this is not msgpack")
        assert reply["source"] == "request_decode" and not reply["must_reconnect"], reply
        reply = dealer.send_raw(b"\x93garbage")
        assert reply["source"] == "request_decode", reply
        # an object array inside a valid message is refused, never unpickled
        obj = np.array([{"a": 1}], dtype=object)
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=True)
        pickled_array = {"__ndarray_class__": True, "as_npy": buf.getvalue()}
        raw = msgpack.packb(
            {"endpoint": "get_action", "api_token": TOKEN,
             "data": {"observation": {"state": pickled_array}}}
        )  # fmt: skip
        reply = req.send_raw(raw)
        assert reply["source"] == "pickle", reply
        reply = req.call("get_action", observation={"state": np.zeros((1, 7))})
        assert reply["source"] == "spec" and "state" in reply["error"], reply
        assert req.call("kill") == {"status": "rejected", "reason": "remote kill disabled"}
        assert dealer.call("kill") == {"status": "rejected", "reason": "remote kill disabled"}
        assert req.call("ping")["status"] == "ok"
        assert dealer.call("ping")["status"] == "ok"
        mc = req.call("get_modality_config")
        assert mc["action"]["as_json"]["delta_indices"] == [0], mc
        assert mc["state"]["as_json"]["modality_keys"] == ["state"], mc
        assert dealer.call("disconnect") == {"status": "disconnected"}
        assert gw.poll() is None
        log = p.log_of(gw)
        assert TOKEN not in log and "wrong-token" not in log
        for c in (req, dealer, bad):
            c.close()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
        assert not live_gateways(r, keys)


def test_token_never_from_argv_and_missing_env_is_a_clear_error(settings: RedisSettings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "gateway", "zmq", "--pool", "p",
         "--api-token-env", "ARENA_TEST_NO_SUCH_VAR"],
        cwd=REPO, env=child_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "ARENA_TEST_NO_SUCH_VAR" in out.stderr and "not set" in out.stderr, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "gateway", "zmq", "--pool", "p",
         "--api-token", "x"],
        cwd=REPO, env=child_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0  # no such option


def _hammer(
    address: str, client_no: int, requests: int, errors: list[Any], done: list[int]
) -> None:
    client = PeerClient(address, kind="req" if client_no % 2 else "dealer", token=TOKEN)
    try:
        for i in range(requests):
            x = np.full((2, DIM), client_no * 1000 + i, np.float32)
            x[1] += 0.5
            reply = client.call("get_action", observation={"x": x})
            if not isinstance(reply, list) or "error" in reply[0]:
                errors.append(reply)
                return
            np.testing.assert_array_equal(reply[0]["action"], echo_actions(x))
        done.append(client_no)
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        client.close()


def test_eight_clients_batch_together_and_each_gets_its_own_rows(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    pool = "slow"
    with procs(settings, tmp_path) as p:
        worker = p.cli("policy", "serve", "--pool", pool, "--policy", SLOW_ECHO, name="slow")
        wait_until(lambda: live_workers(r, keys, pool), 60, "the worker", [worker])
        _, address = start_gateway(p, r, keys, pool)
        errors: list[Any] = []
        done: list[int] = []
        threads = [
            threading.Thread(target=_hammer, args=(address, n, 40, errors, done)) for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        assert sorted(done) == list(range(8))

        def mean_batch() -> float:
            (pool_info,) = cli_json(settings, "pools")["pools"]
            (w,) = pool_info["workers"]
            return float(w["mean_batch_rows"]) if w["requests"] >= 8 * 40 else 0.0

        # rows per forward pass: 2 per request, so > 2 means requests of several clients
        batch = float(wait_until(mean_batch, 10, "the worker's heartbeat to count them"))  # type: ignore[arg-type]
        assert batch > 2.0, batch


@pytest.mark.slow
def test_kill_9_of_the_only_worker_is_a_delay_for_gateway_clients(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    pool = "recover"
    with procs(settings, tmp_path) as p:
        serve = ("policy", "serve", "--pool", pool, "--policy", SLOW_ECHO)
        doomed = p.cli(*serve, "--policy-arg", "latency_ms=20", "--worker-id", "doomed",
                       name="doomed")  # fmt: skip
        wait_until(lambda: live_workers(r, keys, pool), 60, "the worker", [doomed])
        _, address = start_gateway(p, r, keys, pool, "--timeout", "60")
        errors: list[Any] = []
        done: list[int] = []
        threads = [
            threading.Thread(target=_hammer, args=(address, n, 150, errors, done)) for n in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)  # mid-run
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(5)
        wait_until(lambda: not live_workers(r, keys, pool), 20, "the heartbeat to expire")
        rescuer = p.cli(*serve, "--policy-arg", "latency_ms=20", "--claim-idle-ms", "500",
                        name="rescuer")  # fmt: skip
        for t in threads:
            t.join(120)
        assert rescuer.poll() is None
        assert not errors, errors[:3]
        assert sorted(done) == list(range(4))


@pytest.mark.slow
def test_up_starts_a_gateway_in_front_of_its_pool(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    port, ws_port = free_port(), free_port()
    env = child_env(settings, ARENA_HOME=str(tmp_path / "home"))
    up = subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli", "up", "--sim-workers", "0", "--pool", "upgw",
         "--policy", "metaworld-expert", "--policy-arg", "task=reach-v3",
         "--gateway", f"zmq:{port}", "--gateway", f"openpi:{ws_port}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: len(live_gateways(r, keys, "upgw")) == 2, 90, "the gateways", [up])
        client = PeerClient(f"tcp://127.0.0.1:{port}", kind="req")
        reply = client.call("get_action", observation={"state": np.zeros((3, 39))})
        assert reply[0]["action"].shape == (3, 1, 4), reply
        client.close()
        records = {g["protocol"]: g for g in cli_json(settings, "workers")["gateways"]}
        assert records["zmq"]["address"] == f"tcp://0.0.0.0:{port}"
        assert records["zmq"]["pool"] == records["openpi"]["pool"] == "upgw"
        health = urllib.request.urlopen(f"http://127.0.0.1:{ws_port}/healthz", timeout=10)
        assert health.status == 200
    finally:
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=60)[0].decode(errors="replace")
    assert up.returncode == 0, output
    assert f"gateway-zmq-{port}" in output and f"gateway-openpi-{ws_port}" in output
    assert live_gateways(r, keys) == []  # it deregistered on the way out


def test_up_refuses_a_bad_gateway_before_starting_anything(settings: RedisSettings) -> None:
    for args, needle in (
        (["--gateway", "http:80", "--pool", "p", "--policy", "zero"], "PROTOCOL:PORT"),
        (["--gateway", "zmq:5555"], "needs --pool"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "arena_eval.cli", "up", *args],
            cwd=REPO, env=child_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, out.stdout + out.stderr
        assert needle in " ".join(out.stderr.split()), out.stderr


def test_redis_restart_is_a_pause_for_the_gateway(own_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from arena_eval.policy_worker.server import PolicyWorker
    from arena_eval.sim_worker.gateways.core import GatewayConfig, GatewayCore
    from arena_eval.sim_worker.gateways.zmq_gateway import ZmqGateway
    from tests.zmq_peer_clients import SlowEchoPolicy

    settings = RedisSettings(url=own_server.url, prefix="gwrestart:", retry_budget_s=20)
    keys = Keys(settings.prefix)
    worker = PolicyWorker("p", SlowEchoPolicy(latency_ms=0), settings, max_wait_ms=1.0)
    worker_thread = threading.Thread(target=worker.run, daemon=True)
    worker_thread.start()
    core = GatewayCore(GatewayConfig(pool="p", protocol="zmq", address="-", redis=settings,
                                     timeout_s=20))  # fmt: skip
    gateway = ZmqGateway(core, "tcp://127.0.0.1:0", None)
    core.start()
    serving = threading.Thread(target=gateway.serve, daemon=True)
    serving.start()
    client = PeerClient(gateway.address, kind="dealer")
    try:
        x = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
        first = client.call("get_action", observation={"x": x})
        np.testing.assert_array_equal(first[0]["action"], echo_actions(x))
        own_server.restart()
        restarted = time.time()
        again = client.call("get_action", observation={"x": x + 1})
        np.testing.assert_array_equal(again[0]["action"], echo_actions(x + 1))
        r = redis.Redis.from_url(own_server.url)

        def beating_again() -> bool:
            return any(float(g.data["heartbeat"]) > restarted for g in live_gateways(r, keys, "p"))

        wait_until(beating_again, 15, "the gateway's heartbeat after the restart")
    finally:
        client.close()
        gateway.stop()
        serving.join(10)
        core.stop()
        worker.stop()
        worker_thread.join(10)
    assert not serving.is_alive()


def test_tokens_come_from_env_or_file_and_compare_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arena_eval.broker.errors import ConfigError
    from arena_eval.sim_worker.gateways.core import load_token, token_ok

    assert load_token() is None
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert load_token(env_var=TOKEN_ENV) == TOKEN
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_token(file=path) == TOKEN
    for kwargs, needle in (
        ({"env_var": TOKEN_ENV, "file": path}, "not both"),
        ({"env_var": "ARENA_TEST_UNSET_VAR"}, "not set"),
        ({"file": tmp_path / "missing"}, "cannot read"),
    ):
        with pytest.raises(ConfigError, match=needle) as err:
            load_token(**kwargs)  # type: ignore[arg-type]
        assert TOKEN not in str(err.value)
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_token(file=path)
    assert token_ok(None, None) and token_ok(None, "anything")
    assert token_ok(TOKEN, TOKEN) and token_ok(TOKEN, TOKEN.encode())
    for wrong in (None, "", TOKEN[:-1], TOKEN + "x", 123, [TOKEN]):
        assert not token_ok(TOKEN, wrong)


@contextlib.contextmanager
def in_process_gateway(
    settings: RedisSettings,
    pool: str,
    *,
    token: str | None = None,
    latency_ms: float = 0,
    **config: Any,
) -> Iterator[tuple[Any, Any, Any]]:
    """(core, gateway, policy): a SlowEcho worker and a ZMQ gateway on threads, real Redis."""
    from arena_eval.policy_worker.server import PolicyWorker
    from arena_eval.sim_worker.gateways.core import GatewayConfig, GatewayCore
    from arena_eval.sim_worker.gateways.zmq_gateway import ZmqGateway
    from tests.zmq_peer_clients import SlowEchoPolicy

    policy = SlowEchoPolicy(latency_ms=latency_ms)
    worker = PolicyWorker(pool, policy, settings, max_wait_ms=1.0)
    worker_thread = threading.Thread(target=worker.run, daemon=True)
    worker_thread.start()
    core = GatewayCore(
        GatewayConfig(pool=pool, protocol="zmq", address="-", redis=settings, **config)
    )
    gateway = ZmqGateway(core, "tcp://127.0.0.1:0", token)
    core.start()
    serving = threading.Thread(target=gateway.serve, daemon=True)
    serving.start()
    try:
        yield core, gateway, policy
    finally:
        gateway.stop()
        serving.join(10)
        core.stop()
        worker.stop()
        worker_thread.join(10)
    assert not serving.is_alive()


def test_idle_clients_lose_their_stream_but_keep_their_session(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """After the idle timeout the reply stream goes, but the client's state stays: an Arena
    client still gets Arena's reply shape and its task description (it used to come back as
    a GR00T client with no instruction)."""
    with in_process_gateway(settings, "idle", idle_timeout_s=0.5) as (core, gateway, policy):
        client = PeerClient(gateway.address, kind="req")
        arena = PeerClient(gateway.address, kind="dealer")
        try:
            x = np.zeros((1, DIM), np.float32)
            client.call("get_action", observation={"x": x})
            assert arena.call("get_init_info", requested_action_mode="chunk")["action_dim"] == DIM
            arena.call("set_task_description", task_description="stack the cubes")
            arena.call("get_action", observation={"x": x})
            assert core.status()["sessions"] == 2
            assert set(r.scan_iter(f"{settings.prefix}client:*"))  # the sessions' reply streams
            wait_until(lambda: not set(r.scan_iter(f"{settings.prefix}client:*")), 10,
                       "the idle sessions' streams to go")  # fmt: skip
            assert core.status()["sessions"] == 2  # the sessions themselves stay
            again = client.call("get_action", observation={"x": x + 1})  # a new stream
            np.testing.assert_array_equal(again[0]["action"], echo_actions(x + 1))
            reply = arena.call("get_action", observation={"x": x + 2})
            assert isinstance(reply, dict) and set(reply) == {"action"}, reply
            np.testing.assert_array_equal(reply["action"], echo_actions(x + 2))
            assert policy.last_instructions == ["stack the cubes"]
            assert arena.call("disconnect") == {"status": "disconnected"}
            wait_until(lambda: core.status()["sessions"] == 1, 5, "disconnect to forget it")
        finally:
            client.close()
            arena.close()


def test_sessions_silent_past_forget_after_are_forgotten(settings: RedisSettings) -> None:
    """ZeroMQ never says a peer left: ``forget_after_s`` bounds the sessions kept."""
    from arena_eval.sim_worker.gateways.core import GatewayConfig, GatewayCore

    core = GatewayCore(GatewayConfig(pool="p", protocol="zmq", address="-", redis=settings,
                                     idle_timeout_s=0.1, forget_after_s=1.0))  # fmt: skip
    try:
        core.session("a")
        time.sleep(0.6)
        core.session("b")
        core.drop_idle()
        assert core.status()["sessions"] == 2  # idle, not yet forgotten
        time.sleep(0.6)
        core.drop_idle()
        assert core.status()["sessions"] == 1  # "a" silent 1.2 s: forgotten; "b" kept
    finally:
        core.stop()


def test_flooding_clients_are_bounded(settings: RedisSettings) -> None:
    """An oversized message drops its connection unread; a tokenless request's arrays are
    never loaded; a second request pipelined by one identity is refused as busy."""
    limit = 64 * 1024
    with in_process_gateway(
        settings, "flood", token=TOKEN, latency_ms=300, max_message_bytes=limit
    ) as (_core, gateway, _):
        big = PeerClient(gateway.address, kind="dealer", token=TOKEN, timeout_ms=1500)
        ok = PeerClient(gateway.address, kind="req", token=TOKEN)
        anon = PeerClient(gateway.address, kind="req")
        pipe = PeerClient(gateway.address, kind="dealer", token=TOKEN)
        try:
            # over the limit: no reply at all (without MAXMSGSIZE: a "not msgpack" error)
            big.sock.send_multipart([b"", b"\xc1" * (limit + 1)])
            with pytest.raises(zmq.Again):
                big.sock.recv_multipart()
            assert ok.call("ping")["status"] == "ok"  # the gateway keeps serving

            # no token and an invalid .npy: refused by the token check, never decoded
            garbage = {"__ndarray_class__": True, "as_npy": b"not an npy file" * 1000}
            reply = anon.send_raw(msgpack.packb(
                {"endpoint": "get_action", "data": {"observation": {"x": garbage}}},
                use_bin_type=True,
            ))  # fmt: skip
            assert reply["source"] == "auth", reply

            # two requests pipelined by one DEALER: the second is refused, the first answered
            x = np.ones((1, DIM), np.float32)
            first = pack("get_action", {"observation": {"x": x}}, TOKEN)
            second = pack("get_action", {"observation": {"x": x + 1}}, TOKEN)
            pipe.sock.send_multipart([b"", first])
            pipe.sock.send_multipart([b"", second])
            replies = [unpack(pipe.sock.recv_multipart()[-1]) for _ in range(2)]
            errors = [rep for rep in replies if isinstance(rep, dict) and "error" in rep]
            answers = [rep for rep in replies if isinstance(rep, list)]
            assert len(errors) == 1 and errors[0]["source"] == "busy", replies
            assert len(answers) == 1, replies
            np.testing.assert_array_equal(answers[0][0]["action"], echo_actions(x))
            # once answered, the same identity is served again
            again = pipe.call("get_action", observation={"x": x + 2})
            np.testing.assert_array_equal(again[0]["action"], echo_actions(x + 2))
        finally:
            for c in (big, ok, anon, pipe):
                c.close()


def test_gateway_outlives_an_outage_longer_than_its_retry_budget(own_server) -> None:  # type: ignore[no-untyped-def]
    """Redis down for longer than redis-py's own retries cover: the heartbeat thread keeps
    trying with backoff and the gateway is listed again once Redis is back (a thread that let
    the error escape would leave the gateway serving but unlisted for ever)."""
    from arena_eval.sim_worker.gateways.core import GatewayConfig, GatewayCore

    settings = RedisSettings(url=own_server.url, prefix="gwdown:", retry_budget_s=0.3)
    keys = Keys(settings.prefix)
    core = GatewayCore(GatewayConfig(pool="p", protocol="zmq", address="-", redis=settings))
    core.start()
    r = redis.Redis.from_url(own_server.url)
    try:
        wait_until(lambda: live_gateways(r, keys, "p"), 10, "the gateway's first record")
        own_server.stop()
        time.sleep(3.0)  # ten times the retry budget
        own_server.start()
        back = time.time()
        r = redis.Redis.from_url(own_server.url)

        def beating_again() -> bool:
            return any(float(g.data["heartbeat"]) > back for g in live_gateways(r, keys, "p"))

        wait_until(beating_again, 20, "the gateway's heartbeat after the outage")
    finally:
        core.stop()
