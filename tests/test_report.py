"""``arena-eval report``: the data behind it, the one self-contained file, and a real browser.

Jobs are written with the broker's own ``results.record`` (``tests/report_jobs.py``) so the
figures can be checked against known outcomes. The browser test loads the file in Debian's
headless Chromium with console logging on: every ``console.*`` message and every uncaught
error is logged as a ``CONSOLE`` line, and plotly's drawn charts appear in the dumped DOM as
``main-svg`` elements. A page that throws is checked the same way, so the check can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import jobs
from arena_eval.broker.jobs import JobNotFound, JobSpec
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import wilson_interval
from arena_eval.broker.report_data import SPLIT_PARTS, report_data
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from tests.report_jobs import ROUND_TRIP_MS, SIM_MS_PER_STEP, TIMING, write_job

pytest.importorskip("plotly", reason="arena-eval report needs the [report] extra (plotly)")

TASKS = ("metaworld/door-open-v3", "metaworld/reach-v3", "metaworld/push-v3")
#: Outcomes per task; B differs from A on a few episodes, both ways.
A = ((1, 1, 1, 1, 1, 1, 0, 1), (1, 0, 1, 0, 1, 1, 0, 0), (0, 0, 0, 1, 0, 0, 0, 0))
B = ((1, 1, 1, 1, 1, 1, 1, 1), (1, 1, 1, 0, 1, 1, 1, 0), (0, 1, 0, 1, 0, 0, 0, 0))
EPISODES = 8
#: Figures in a two-job report (success, comparison, lengths, latency, split, throughput).
FIGURES = 6


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on this machine (CI installs Debian's: apt-get install chromium)")
    return found


def _jobs(r: redis.Redis, keys: Keys) -> tuple[str, str]:
    a = write_job(r, keys, pool="ckpt-a", tasks=TASKS, episodes=EPISODES, success=A)
    b = write_job(r, keys, pool="ckpt-b", tasks=TASKS, episodes=EPISODES, success=B)
    return a, b


def _report(settings: RedisSettings, out: Path, *job_ids: str) -> None:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    result = CliRunner().invoke(app, ["report", *job_ids, "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in " ".join(result.output.split())


def test_report_data_has_per_task_rates_latency_and_time_split(r: redis.Redis, keys: Keys) -> None:
    job_a, job_b = _jobs(r, keys)
    warnings: list[str] = []
    data = report_data(r, keys, [job_a, job_b], warnings)
    assert warnings == []
    a = data["jobs"][0]
    assert [row["task"] for row in a["tasks"]] == list(TASKS)
    for row, outcomes in zip(a["tasks"], A, strict=True):
        assert (row["episodes"], row["successes"]) == (EPISODES, sum(outcomes))
        low, high = wilson_interval(sum(outcomes), EPISODES)
        assert row["wilson_low"] == pytest.approx(low) and row["wilson_high"] == pytest.approx(high)
    assert len(a["episodes"]) == len(TASKS) * EPISODES
    assert {e["task"] for e in a["episodes"]} == set(TASKS)
    split = a["split"]
    assert sum(b["count"] for b in a["latency"]) == split["requests"] > 0
    policy = split["policy_ms"]
    assert list(policy) == list(SPLIT_PARTS)
    for part in ("infer", "decode", "encode", "queue"):
        assert policy[part] / split["requests"] == pytest.approx(TIMING[f"{part}_ms"])
    assert sum(policy.values()) == pytest.approx(split["round_trip_ms"])
    assert split["round_trip_ms"] / split["requests"] == pytest.approx(ROUND_TRIP_MS, rel=0.2)
    steps = sum(e["length"] for e in a["episodes"])
    assert split["sim_ms"] == pytest.approx(SIM_MS_PER_STEP * steps)
    comparison = data["comparison"]
    assert comparison is not None and comparison["paired"]
    flips = [(row["a_only"], row["b_only"]) for row in comparison["tasks"]]
    assert flips == [(0, 1), (0, 2), (0, 1)]
    one = report_data(r, keys, [job_a], warnings)
    assert one["comparison"] is None


def test_report_is_one_self_contained_file(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    job_a, _ = _jobs(r, keys)
    out = tmp_path / "report.html"
    _report(settings, out, job_a)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert re.search(r"<script[^>]*\bsrc=", page) is None  # nothing fetched: no CDN, no file
    assert re.search(r"<link[^>]*\bhref=", page) is None
    assert page.count("plotly.js v") >= 1 and len(page) > 1_000_000  # plotly.js inline, once
    assert page.count("Plotly.newPlot(") == FIGURES - 1  # no comparison for one job
    for task in TASKS:
        assert task in page
    assert job_a in page


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _load(chromium: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args,
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_console_check_catches_a_page_that_throws(tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>throw new Error('broken-report')</script></body></html>")
    out = _load(chromium, page, "--dump-dom")
    assert any("broken-report" in line for line in _console_lines(out.stderr)), out.stderr[-2000:]


@pytest.mark.slow
def test_report_loads_in_headless_chromium_with_no_console_error(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    chromium = _chromium()
    job_a, job_b = _jobs(r, keys)
    page = tmp_path / "report.html"
    _report(settings, page, job_a, job_b)
    out = _load(chromium, page, "--dump-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _console_lines(out.stderr) == []
    dom = out.stdout
    drawn = re.findall(r'<div id="[^"]+" class="plotly-graph-div[^>]*>', dom)
    assert len(drawn) == FIGURES
    assert dom.count('class="main-svg"') >= FIGURES  # plotly drew every chart
    assert "Paired comparison" in dom and "mcnemar" in dom.lower()
    shot = tmp_path / "report.png"
    taken = _load(chromium, page, f"--screenshot={shot}", "--window-size=1280,4200")
    assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000  # charts, not a blank page


def test_report_of_an_unknown_job_says_so_and_writes_nothing(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    job_a, _ = _jobs(r, keys)
    out = tmp_path / "report.html"
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    result = CliRunner().invoke(
        app, ["report", job_a, "20990101-000000-abcdef", "-o", str(out)], env=env
    )
    assert isinstance(result.exception, JobNotFound)
    assert "no job 20990101-000000-abcdef" in str(result.exception)
    assert list(tmp_path.iterdir()) == []  # no report, and no temporary file left behind


def test_a_job_with_no_episode_yet_still_gets_a_report(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    job = jobs.submit(r, keys, JobSpec(task=TASKS[0], tasks=TASKS, pool="nobody", episodes=3))
    out = tmp_path / "report.html"
    _report(settings, out, job)
    page = out.read_text()
    assert job in page and "queued" in page and page.count("Plotly.newPlot(") == FIGURES - 1
