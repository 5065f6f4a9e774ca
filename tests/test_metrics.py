"""Fleet metrics and health (issue 12, part 4): ``--metrics-port`` and ``metrics serve``.

Real processes (the CLI in subprocesses), real Redis, real CartPole jobs. Every
scrape goes through HTTP and ``prometheus_client``'s own text parser, so a
malformed exposition fails here. No test asserts a timing: waits are for
conditions (a status code, a counter reaching the job's own count).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from arena_eval.broker import jobs, results, telemetry
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.fleet_metrics import FleetCollector, round_trip_buckets
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import LatencyHistogram
from arena_eval.broker.metrics_http import MetricsEndpoint
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker import decoding, entries
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.entries import Pending
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.policy_worker.stats import WorkerStats
from arena_eval.sim_worker.service import SimWorker
from tests.redis_servers import TestServer, free_port
from tests.worker_procs import Procs, procs, wait_until

pytest.importorskip("gymnasium")  # CartPole jobs: the [sim] extra

ZERO = ("--policy", "zero", "--policy-arg", "action_shape=1x1")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of ``GET http://127.0.0.1:port/path``; (0, why) when nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        return 0, str(exc)


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus_client's text parser."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def wait_status(port: int, path: str, status: int, procs_: list[object]) -> str:
    found = wait_until(
        lambda: (lambda got: got[1] if got[0] == status else None)(get(port, path)),
        90, f"{path} to answer {status}", procs_,  # type: ignore[arg-type]
    )  # fmt: skip
    return str(found)


@pytest.fixture
def fleet_procs(settings: RedisSettings, r: redis.Redis, tmp_path: Path) -> Iterator[Procs]:
    # depends on ``r``: children are killed before the test's keys are deleted
    with procs(settings, tmp_path) as p:
        yield p


def test_worker_metrics_parse_and_count_a_jobs_requests(
    fleet_procs: Procs, r: redis.Redis, keys: Keys
) -> None:
    """Policy and sim workers' /metrics parse, and their counters move from 0 to the job's
    own counts (every request the sims sent, answered ok; every episode and step)."""
    p = fleet_procs
    pport, sport = free_port(), free_port()
    pol = p.cli("policy", "serve", "--pool", "mx", *ZERO, "--metrics-port", str(pport),
                name="policy")  # fmt: skip
    sim = p.cli("sim", "serve", "--num-envs", "2", "--metrics-port", str(sport), name="sim")
    wait_status(pport, "/readyz", 200, [pol])
    wait_status(sport, "/readyz", 200, [sim])
    before = scrape(pport)
    assert value(before, "arena_requests_total", pool="mx", outcome="ok") == 0
    assert value(before, "arena_build_info", role="policy") == 1
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="mx", episodes=20))
    wait_until(
        lambda: value(scrape(pport), "arena_requests_total", pool="mx", outcome="ok") > 0,
        90, "the policy worker's ok counter to move", [pol, sim],
    )  # fmt: skip
    wait_until(lambda: jobs.get_job(r, keys, job_id).state.terminal, 120, "the job", [pol, sim])
    assert jobs.get_job(r, keys, job_id).state is jobs.JobState.COMPLETED
    stats = results.read_stats(r, keys, job_id)
    sent, steps = int(stats["requests"]), int(stats["steps"])
    assert sent > 0
    sim_done = wait_until(
        lambda: (lambda m: m if value(m, "arena_episodes_total", job=job_id) == 20 else None)(
            scrape(sport)
        ),
        30, "the sim worker's episode counter", [sim],
    )  # fmt: skip
    assert isinstance(sim_done, dict)
    assert value(sim_done, "arena_client_requests_total", pool="mx", outcome="ok") == sent
    assert value(sim_done, "arena_round_trip_seconds_count", pool="mx") == sent
    assert value(sim_done, "arena_sim_steps_total") == steps
    failures = value(sim_done, "arena_episodes_total", job=job_id, outcome="failure")
    assert failures + value(sim_done, "arena_episodes_total", job=job_id, outcome="success") == 20
    after = scrape(pport)
    assert value(after, "arena_requests_total", pool="mx", outcome="ok") == sent
    assert value(after, "arena_queue_seconds_count", pool="mx") == sent
    assert value(after, "arena_batch_rows_sum", pool="mx") == int(stats["rows"])
    assert value(after, "arena_infer_seconds_count", pool="mx") >= 1
    for outcome in ("error", "dead", "expired", "stale"):
        assert value(after, "arena_requests_total", pool="mx", outcome=outcome) == 0
    assert 0 < value(after, "arena_busy_fraction", pool="mx") <= 1


def test_readyz_is_503_until_the_model_loads(fleet_procs: Procs, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    port = free_port()
    pol = fleet_procs.cli(
        "policy", "serve", "--pool", "gated", "--policy", "tests.metrics_policies:GatedPolicy",
        "--policy-arg", f"gate={gate}", "--metrics-port", str(port), name="policy",
    )  # fmt: skip
    wait_status(port, "/healthz", 200, [pol])
    status, body = get(port, "/readyz")
    assert (status, body.strip()) == (503, "not loaded yet: model")
    assert value(scrape(port), "arena_build_info", role="policy") == 1  # served while loading
    gate.touch()
    assert wait_status(port, "/readyz", 200, [pol]).strip() == "ok"
    assert get(port, "/healthz")[0] == 200


def test_sim_serve_ready_then_503_while_redis_is_away(
    own_server: TestServer, tmp_path: Path
) -> None:
    settings = RedisSettings(url=own_server.url, prefix="m:", retry_budget_s=60.0)
    port = free_port()
    with procs(settings, tmp_path) as p:
        sim = p.cli("sim", "serve", "--num-envs", "1", "--metrics-port", str(port), name="sim")
        assert wait_status(port, "/readyz", 200, [sim]).strip() == "ok"
        assert value(scrape(port), "arena_build_info", role="sim") == 1
        own_server.stop()
        body = wait_status(port, "/readyz", 503, [sim])
        assert "does not answer" in body
        assert get(port, "/healthz")[0] == 200  # alive: the worker waits for Redis to return
        assert sim.poll() is None


def test_fleet_exporter_shows_pools_workers_and_jobs(
    fleet_procs: Procs, settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    port = free_port()
    exporter = fleet_procs.cli("metrics", "serve", "--port", str(port), name="exporter")
    wait_status(port, "/readyz", 200, [exporter])
    policy = PolicyWorker("fx", ZeroPolicy(action_shape="1x1"), settings)
    thread = threading.Thread(target=policy.run, daemon=True)
    thread.start()
    try:
        job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="fx", episodes=4))
        SimWorker(settings, num_envs=2, block_ms=100).run(burst=True)
        assert jobs.get_job(r, keys, job_id).state is jobs.JobState.COMPLETED
        stats = results.read_stats(r, keys, job_id)
        sent = int(stats["requests"])
        # the worker's counters reach the exporter with its next heartbeat
        m = wait_until(
            lambda: (lambda s: s if value(s, "arena_worker_requests_total", pool="fx",
                                          outcome="ok") == sent else None)(scrape(port)),
            30, "the heartbeat's counters", [exporter],
        )  # fmt: skip
    finally:
        policy.stop()
        thread.join(10)
    assert isinstance(m, dict)
    assert value(m, "arena_redis_up") == 1
    assert value(m, "arena_pool_live_workers", pool="fx") == 1
    assert value(m, "arena_pool_pending_requests", pool="fx") == 0
    assert value(m, "arena_pool_dead_letters", pool="fx") == 0
    assert value(m, "arena_worker_rows_total", pool="fx") == int(stats["rows"])
    assert 0 < value(m, "arena_worker_busy_fraction", pool="fx") <= 1
    job = {"job": job_id, "pool": "fx"}
    episodes = value(m, "arena_job_episodes_total", **job)
    assert episodes == value(m, "arena_job_episodes_expected", **job) == 4
    assert value(m, "arena_job_episodes_total", **job, outcome="success") == int(
        stats.get("successes", 0)
    )
    assert value(m, "arena_job_state", **job, state="completed") == 1
    assert value(m, "arena_job_steps_total", **job) == int(stats["steps"])
    assert value(m, "arena_job_requests_total", **job) == sent
    assert value(m, "arena_job_round_trip_seconds_count", **job) == sent
    assert value(m, "arena_build_info", role="exporter") == 1


def test_fleet_exporter_says_redis_down_instead_of_failing(
    own_server: TestServer, tmp_path: Path
) -> None:
    settings = RedisSettings(url=own_server.url, prefix="m:")
    port = free_port()
    with procs(settings, tmp_path) as p:
        exporter = p.cli("metrics", "serve", "--port", str(port), name="exporter")
        wait_status(port, "/readyz", 200, [exporter])
        assert value(scrape(port), "arena_redis_up") == 1
        own_server.stop()
        assert value(scrape(port), "arena_redis_up") == 0
        assert "does not answer" in wait_status(port, "/readyz", 503, [exporter])


# -- in-process: the parts the end-to-end tests cannot reach on purpose ---------------------
def test_a_taken_port_is_one_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = MetricsEndpoint(telemetry.Recorder("policy").registry, ready=lambda: (True, ""))
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            endpoint.start("127.0.0.1", port)


@pytest.fixture
def recording() -> Iterator[telemetry.Recorder]:
    rec = telemetry.enable("policy", pool="px", needs=("model",))
    try:
        yield rec
    finally:
        telemetry.disable()


def test_dead_letters_are_told_apart_by_reason(recording: telemetry.Recorder) -> None:
    """Over-delivered entries count as ``dead``, bad input as ``error``, answers as ``ok``."""
    keys = Keys("t:")
    poison = decoding.over_delivered(Pending("s", b"1-0", {}, 0.0), keys, 5, 3)
    bad = Pending("s", b"2-0", {}, 0.0, error="SpecMismatch: no")
    good = Pending("s", b"3-0", {}, 0.0)
    entries.answer_commands(
        [(good, {"rid": "r", "kind": "actions"})], [poison, bad, good],
        dead_stream="t:dead", worker_id="w",
    )  # fmt: skip
    assert recording.answered == {"ok": 1, "error": 1, "dead": 1}
    assert recording.dead_letters == 2
    assert recording.over_delivered == set()  # forgotten once dead-lettered


def test_readiness_waits_for_what_the_role_needs(recording: telemetry.Recorder) -> None:
    assert telemetry.readiness() == (False, "not loaded yet: model")
    stats = WorkerStats(infer_s=1.0, started=time.time() - 4.0)
    telemetry.policy_serving("px", stats)
    assert telemetry.readiness() == (True, "ok")
    assert telemetry.busy_fraction(stats, now=stats.started + 4.0) == 0.25


def test_round_trip_buckets_are_cumulative_in_seconds() -> None:
    hist = LatencyHistogram()
    for ms in (0.3, 0.3, 4.0, 90.0, 60_000.0):
        hist.add(ms)
    stats = {**{k: float(v) for k, v in hist.fields().items()}, "sum:round_trip_ms": 60094.6}
    buckets, total_ms = round_trip_buckets(stats)
    counts = dict(buckets)
    assert counts["0.0005"] == 2  # 0.3 ms: its log bucket ends below 0.5 ms
    assert counts["0.005"] == 3
    assert counts["0.1"] == 4
    assert counts["30.0"] == 4 and counts["+Inf"] == 5  # 60 s: past the last bound
    assert [c for _le, c in buckets] == sorted(c for _le, c in buckets)
    assert total_ms == 60094.6


def test_gateway_is_ready_once_its_pool_has_a_spec(
    fleet_procs: Procs, settings: RedisSettings
) -> None:
    """A gateway's /readyz waits for its pool's spec (a policy worker has served the pool)."""
    pytest.importorskip("zmq")
    port = free_port()
    gw = fleet_procs.cli(
        "gateway", "zmq", "--pool", "gz", "--bind", f"tcp://127.0.0.1:{free_port()}",
        "--metrics-port", str(port), name="gateway",
    )  # fmt: skip
    body = wait_status(port, "/readyz", 503, [gw])
    assert body.startswith("pool spec not loaded") and "'gz'" in body
    assert value(scrape(port), "arena_build_info", role="gateway") == 1
    policy = PolicyWorker("gz", ZeroPolicy(action_shape="1x1"), settings)
    thread = threading.Thread(target=policy.run, daemon=True)
    thread.start()
    try:
        assert wait_status(port, "/readyz", 200, [gw]).strip() == "ok"
    finally:
        policy.stop()
        thread.join(10)


def test_fleet_exporter_jobs_zero_exports_no_job(r: redis.Redis, keys: Keys) -> None:
    """``--jobs 0`` means none (a ZREVRANGE 0..0 would still return the newest one)."""
    jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=1))
    names = {s.name for m in FleetCollector(r, keys, jobs=0).collect() for s in m.samples}
    assert not {n for n in names if n.startswith("arena_job_")}
    names = {s.name for m in FleetCollector(r, keys, jobs=1).collect() for s in m.samples}
    assert "arena_job_episodes_expected" in names


def test_pool_histogram_renders_cumulative_le_buckets() -> None:
    hist = telemetry.PoolHistogram("arena_x_seconds", "x", (0.1, 1.0))
    hist.observe("a", 0.1)  # on a bound: counted under it (le is "at most")
    hist.observe_all("a", [0.5, 7.0])
    hist.observe("b", 2.0)
    rendered = {
        (s.name, s.labels.get("pool"), s.labels.get("le")): s.value for s in hist.family().samples
    }
    assert rendered[("arena_x_seconds_bucket", "a", "0.1")] == 1
    assert rendered[("arena_x_seconds_bucket", "a", "1.0")] == 2
    assert rendered[("arena_x_seconds_bucket", "a", "+Inf")] == 3
    assert rendered[("arena_x_seconds_count", "a", None)] == 3
    assert rendered[("arena_x_seconds_sum", "a", None)] == 7.6
    assert rendered[("arena_x_seconds_bucket", "b", "1.0")] == 0
