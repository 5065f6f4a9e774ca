"""The job commands against data they did not write, markup in names, Ctrl-C on ``submit
--wait``, and the smaller fixes: cancel of an ended job, the lost-pool hint, the latest-job
default of ``results``, whole ids at 80 columns, ISO timestamps in CSV, ``jobs prune``.

Real Redis (junk is written with the real client, as redis-cli would) and the real CLI,
through CliRunner or as a subprocess where a signal or a terminal is part of the story.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import redis
from typer.testing import CliRunner, Result

from arena_eval.broker import fleet, jobs, results
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from tests.worker_procs import REPO, child_env, wait_until


def cli_env(settings: RedisSettings) -> dict[str, str]:
    return {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}


def invoke(settings: RedisSettings, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=cli_env(settings))


def run_cli(settings: RedisSettings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", *args],
        cwd=REPO, env=child_env(settings, **env), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def episode(i: int, success: bool = True, finished_at: float = 1.0e9) -> EpisodeResult:
    return EpisodeResult(
        index=i, seed=i, success=success, return_=1.0, length=5,
        metrics={"obj": 0.5}, worker="w", wall_s=0.1, finished_at=finished_at,
    )  # fmt: skip


def new_job(r: redis.Redis, keys: Keys, episodes: int = 3, **spec: object) -> str:
    fields: dict[str, object] = {"task": "CartPole-v1", "pool": "p", "episodes": episodes}
    fields.update(spec)
    return jobs.submit(r, keys, JobSpec(**fields))  # type: ignore[arg-type]


# -- defect 12: data the CLI did not write -------------------------------------------------
@pytest.fixture
def junk_jobs(r: redis.Redis, keys: Keys) -> dict[str, str]:
    good = new_job(r, keys)
    results.record(r, keys, good, "w", time.time(), [episode(0)], {"steps": 5}, {})
    junk = new_job(r, keys)
    results.record(r, keys, junk, "w", time.time(), [episode(0), episode(1, False)], {}, {})
    r.hset(keys.job_stats(junk), mapping={"episodes": "lots", "successes": "nan", "steps": "inf",
                                          "h:oops": "3", "h:4": "-2"})  # fmt: skip
    r.hset(keys.job_results(junk), mapping={
        "7": "not json {", "8": '"a string"', "9": "[1, 2]",
        "10": json.dumps({"index": "ten", "length": 5}), "11": json.dumps({"index": 11}),
    })  # fmt: skip
    r.hset(keys.job_workers(junk), "w-bad", "yesterday")
    r.hset(keys.job(junk), mapping={"state": "exploded", "started": "soon"})
    bad_spec = new_job(r, keys)
    r.hset(keys.job(bad_spec), "spec", "{not json")
    other_spec = new_job(r, keys)
    r.hset(keys.job(other_spec), "spec", json.dumps({"task": "x", "pool": "p", "episodes": "y"}))
    return {"good": good, "junk": junk, "bad_spec": bad_spec, "other_spec": other_spec}


def test_status_names_bad_fields_and_carries_on(
    settings: RedisSettings, keys: Keys, junk_jobs: dict[str, str]
) -> None:
    junk = junk_jobs["junk"]
    out = invoke(settings, "status", junk)
    assert out.exit_code == 0, out.output
    warned = " ".join(out.stderr.split())
    for field in ("'state'", "'started'", "'episodes'", "'successes'", "'steps'", "'h:oops'",
                  "'h:4'", "'w-bad'"):  # fmt: skip
        assert field in warned, field
    assert keys.job_stats(junk) in warned and keys.job(junk) in warned
    assert "invalid:exploded" in out.stdout
    as_json = json.loads(invoke(settings, "status", junk, "--json").stdout)
    assert as_json["state"] == "invalid:exploded" and as_json["episodes_done"] == 0
    for job in ("bad_spec", "other_spec"):
        shown = invoke(settings, "status", junk_jobs[job])
        assert shown.exit_code == 0, shown.output
        assert "'spec'" in shown.stderr


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_results_skip_rows_that_are_not_results(
    settings: RedisSettings, keys: Keys, junk_jobs: dict[str, str], fmt: str
) -> None:
    junk = junk_jobs["junk"]
    out = invoke(settings, "results", junk, "--format", fmt)
    assert out.exit_code == 0, out.output
    warned = " ".join(out.stderr.split())
    for field in ("'7'", "'8'", "'9'", "'10'", "'11'"):
        assert f"{keys.job_results(junk)} field {field}" in warned, field
    assert "not valid JSON" in warned and "not a JSON object" in warned
    if fmt == "json":
        report = json.loads(out.stdout)
        assert [e["index"] for e in report["episodes"]] == [0, 1]
        assert report["metrics"]["success_rate"] == 0.5
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(out.stdout)))
        assert [row[0] for row in rows[1:]] == ["0", "1"]
    else:
        assert "success_rate 0.500" in out.stdout


def test_jobs_lists_every_job_despite_bad_records(
    settings: RedisSettings, r: redis.Redis, keys: Keys, junk_jobs: dict[str, str]
) -> None:
    r.zadd(keys.jobs(), {"not a job id": time.time() + 10})
    out = invoke(settings, "jobs", "--json")
    assert out.exit_code == 0, out.output
    listed = {j["job_id"]: j for j in json.loads(out.stdout)["jobs"]}
    assert set(listed) == set(junk_jobs.values())
    assert listed[junk_jobs["junk"]]["state"] == "invalid:exploded"
    assert listed[junk_jobs["good"]]["episodes_done"] == 1
    assert listed[junk_jobs["junk"]]["episodes_done"] == 0  # 'lots' treated as missing
    warned = " ".join(out.stderr.split())
    assert f"{keys.job(junk_jobs['bad_spec'])} field 'spec'" in warned
    assert "'not a job id'" in warned and "'state'" in warned
    table = run_cli(settings, "jobs", COLUMNS="80")
    assert table.returncode == 0 and "invalid:exploded" in table.stdout, table.stdout


# -- defect 14: markup in user and data strings --------------------------------------------
def test_markup_in_reason_task_and_worker_prints_literally(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    job_id = new_job(r, keys, task="[bold]task[/x]")
    jobs.fail(r, keys, job_id, "[red]boom[/red] in [/x]")
    r.hset(keys.job_workers(job_id), "[blink]w", repr(time.time()))
    out = invoke(settings, "status", job_id)
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "[red]boom[/red] in [/x]" in text and "[bold]task[/x]" in text and "[blink]w" in text
    listed = subprocess_jobs_table(settings)
    assert "[bold]task[/x]" in listed.stdout


def subprocess_jobs_table(settings: RedisSettings) -> subprocess.CompletedProcess[str]:
    out = run_cli(settings, "jobs", COLUMNS="200")
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("job_id", ["[/x]", "[bold]abc"])
def test_cancel_prints_markup_in_ids_literally(settings: RedisSettings, job_id: str) -> None:
    # the id is refused as invalid; the error printed by cli/app.py must show it as typed
    out = run_cli(settings, "cancel", job_id)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and job_id in out.stderr


# -- defect 15: the smaller ones -------------------------------------------------------------
def test_cancel_of_an_ended_job_says_how_it_ended(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    job_id = new_job(r, keys)
    first = invoke(settings, "cancel", job_id)
    assert first.exit_code == 0 and f"job {job_id} cancelled" in first.stdout
    again = invoke(settings, "cancel", job_id)
    assert again.exit_code == 0
    assert "already ended: cancelled" in again.stdout
    assert f"job {job_id} cancelled" not in again.stdout
    done = new_job(r, keys, episodes=1)
    results.record(r, keys, done, "w", time.time(), [episode(0)], {}, {})
    out = invoke(settings, "cancel", done)
    assert out.exit_code == 0 and "already ended: completed" in out.stdout
    assert jobs.get_job(r, keys, done).state is JobState.COMPLETED


def test_running_job_whose_pool_lost_every_worker_gets_a_hint(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    job_id = new_job(r, keys, pool="gone-pool")
    pipe = r.pipeline()
    fleet.heartbeat(pipe, keys, "sim-1", {"state": "running", "job": job_id})  # a live sim
    pipe.execute()
    assert jobs.mark_running(r, keys, job_id)
    s = json.loads(invoke(settings, "status", job_id, "--json").stdout)
    assert s["state"] == "running"
    assert "'gone-pool'" in s["hint"] and "arena-eval policy serve --pool gone-pool" in s["hint"]
    human = invoke(settings, "status", job_id)
    assert "arena-eval policy serve --pool gone-pool" in " ".join(human.stdout.split())


def test_results_default_to_the_latest_job(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    new_job(r, keys)
    time.sleep(0.01)  # the jobs set is ordered by submit time
    latest = new_job(r, keys, episodes=1)
    results.record(r, keys, latest, "w", time.time(), [episode(0)], {}, {})
    out = invoke(settings, "results", "--format", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["job_id"] == latest


def test_jobs_shows_whole_ids_at_80_columns(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    ids = [new_job(r, keys, task="metaworld/door-open-v3", pool="door-expert") for _ in range(3)]
    out = run_cli(settings, "jobs", COLUMNS="80")
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    for job_id in ids:
        assert job_id in out.stdout, out.stdout


def test_csv_finished_at_is_iso_8601_utc(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    job_id = new_job(r, keys, episodes=2)
    eps = [episode(0, finished_at=1.0e9), episode(1, finished_at=1764584221.75)]
    results.record(r, keys, job_id, "w", time.time(), eps, {}, {})
    out = invoke(settings, "results", job_id, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [row["finished_at"] for row in rows] == ["2001-09-09T01:46:40Z", "2025-12-01T10:17:01Z"]


def test_jobs_prune_deletes_only_old_ended_jobs(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    day = 86400.0
    now = time.time()

    def aged(job_id: str, submitted_days_ago: float, ended_days_ago: float | None) -> str:
        r.zadd(keys.jobs(), {job_id: now - submitted_days_ago * day}, xx=True)
        if ended_days_ago is not None:
            r.hset(keys.job(job_id), "finished", repr(now - ended_days_ago * day))
        return job_id

    old_done = new_job(r, keys, episodes=1)
    results.record(r, keys, old_done, "w", now, [episode(0)], {"steps": 5}, {})
    aged(old_done, 10, 9)
    old_cancelled = aged(jobs.cancel(r, keys, new_job(r, keys)).job_id, 10, 8)
    recent_failed = new_job(r, keys)
    jobs.fail(r, keys, recent_failed, "x")
    aged(recent_failed, 10, 1)  # submitted long ago, ended yesterday: kept
    old_queued = aged(new_job(r, keys), 30, None)
    old_running = aged(new_job(r, keys), 30, None)
    jobs.mark_running(r, keys, old_running)
    r.zadd(keys.jobs(), {"20200101-000000-dead00": now - 40 * day})  # its record is gone

    dry = invoke(settings, "jobs", "prune", "--older-than", "7d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    expected = {old_done, old_cancelled, "20200101-000000-dead00"}
    assert report["dry_run"] is True and report["older_than_s"] == 7 * day
    assert {p["job_id"] for p in report["pruned"]} == expected
    assert r.exists(keys.job(old_done), keys.job_results(old_done), keys.job_stats(old_done)) == 3

    out = invoke(settings, "jobs", "prune", "--older-than", "7d")
    assert out.exit_code == 0, out.output
    assert "pruned 3 job(s)" in out.stdout
    for job_id in (old_done, old_cancelled):
        gone = (keys.job(job_id), keys.job_results(job_id), keys.job_stats(job_id),
                keys.job_workers(job_id))  # fmt: skip
        assert r.exists(*gone) == 0
    remaining = {m.decode() for m in r.zrange(keys.jobs(), 0, -1)}
    assert remaining == {recent_failed, old_queued, old_running}
    assert jobs.get_job(r, keys, old_running).state is JobState.RUNNING
    bad = invoke(settings, "jobs", "prune", "--older-than", "a week")
    assert bad.exit_code == 2 and "7d" in bad.output


# -- defect 3: Ctrl-C on submit --wait ------------------------------------------------------
SUBMIT = ("submit", "--task", "CartPole-v1", "--pool", "nobody-serves", "--episodes", "2",
          "--wait")  # fmt: skip


def only_job(r: redis.Redis, keys: Keys) -> str | None:
    ids = r.zrange(keys.jobs(), 0, -1)
    return ids[0].decode() if ids else None


@pytest.mark.slow
def test_ctrl_c_on_submit_wait_without_a_terminal_keeps_the_job(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli", *SUBMIT], cwd=REPO, env=child_env(settings),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        job_id = str(wait_until(lambda: only_job(r, keys), 30, "the job", [proc]))
        time.sleep(1.0)  # well inside the wait loop
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    said = " ".join(stderr.split())
    assert f"job {job_id} keeps running; cancel it with `arena-eval cancel {job_id}`" in said
    assert jobs.get_job(r, keys, job_id).state is JobState.QUEUED


@pytest.mark.slow
def test_ctrl_c_on_submit_wait_on_a_terminal_asks_and_cancels(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI on the pty as its controlling terminal
        os.chdir(REPO)
        env = child_env(settings, TERM="xterm", COLUMNS="120")
        os.execve(sys.executable, [sys.executable, "-m", "arena_eval.cli", *SUBMIT], env)
    seen = b""

    def read_until(pattern: bytes, timeout_s: float) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, seen):
            assert time.monotonic() < deadline, f"no {pattern!r} in {seen[-2000:]!r}"
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child closed the pty
                    break

    try:
        job_id = str(wait_until(lambda: only_job(r, keys), 30, "the job"))
        read_until(re.escape(job_id.encode()), 30)  # the progress bar is up
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
        read_until(rb"cancel job .*\?", 30)
        os.write(fd, b"y\n")
        read_until(rb"cancelled", 30)
        _, wait_status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(wait_status) == 130, seen[-2000:]
    assert jobs.get_job(r, keys, job_id).state is JobState.CANCELLED
