"""Recording from any job (``submit --record``/``--video``): the LeRobot-layout dataset read back
with pyarrow, the same episodes after a sim worker is killed -9 mid-job, and mp4s whose frame
count (PyAV) equals the episode length. Real Redis, real pools and sim workers, real simulators.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from arena_eval.broker import dataset, fleet, report_data, results
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.sim_worker.envs.factory import make_env
from arena_eval.sim_worker.envs.suites import instruction_for
from tests.pusht_probe import skip_without_pusht
from tests.test_jobs import start_pool, start_sims, submit, wait_ready, wait_terminal
from tests.worker_procs import Procs, procs, wait_until

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("gymnasium")

TASK = "metaworld/reach-v3"
EXPERT = ("--policy", "metaworld-expert", "--policy-arg", "task=reach-v3")


def test_record_policy_all_failures_first_n_and_video() -> None:
    base = {"task": TASK, "pool": "p", "episodes": 10, "record_dir": "/tmp/x"}
    assert JobSpec(**base, record="all").records(9, True)
    failures = JobSpec(**base, record="failures")
    assert failures.records(3, False) and not failures.records(3, True)
    first = JobSpec(**base, record="3")
    assert first.records(2, True) and not first.records(3, False)
    assert not first.may_record(3) and first.may_record(2)
    filmed = JobSpec(**base, video=2)
    assert filmed.records(1, True) and not filmed.records(2, False)
    assert not JobSpec(task=TASK, pool="p", episodes=10).recording
    with pytest.raises(ConfigError, match="--record-dir"):
        JobSpec(task=TASK, pool="p", episodes=10, record="all")
    with pytest.raises(ConfigError, match="'all', 'failures' or a number"):
        JobSpec(**base, record="some")
    spec = JobSpec(**base, record="failures", video=1)
    assert JobSpec.from_json(spec.to_json()) == spec


def _frames_of(root: Path) -> dict[int, Any]:
    """Each committed episode's parquet table, read with plain pyarrow."""
    out = {}
    for marker in sorted((root / "meta" / "episodes").glob("episode_*.json")):
        index = json.loads(marker.read_text())["episode_index"]
        out[index] = pq.read_table(root / dataset.data_path(index))
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_recorded_job_reads_back_and_a_kill_9_rerun_gives_the_same_episodes(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    episodes = 24  # units of 12 on one env slot: long enough to be killed mid-unit
    args = ("--task", TASK, "--pool", "expert", "--episodes", str(episodes), "--shard-size", "12",
            "--max-steps", "60", "--record", "all")  # fmt: skip
    with procs(settings, tmp_path) as p:
        start_pool(p, "expert", *EXPERT)
        start_sims(p, 1, "--num-envs", "1", "--lease-ms", "1500")
        wait_ready(r, keys, p, sims=1, pool_name="expert")
        first_dir = tmp_path / "first"
        job_id = submit(settings, *args, "--record-dir", str(first_dir))
        assert wait_terminal(r, keys, job_id, p).state is JobState.COMPLETED
        first = _check_dataset(r, keys, job_id, first_dir, episodes)
        _rerun_with_a_kill(settings, r, keys, p, args, tmp_path / "second", first, episodes)


def _check_dataset(
    r: redis.Redis, keys: Keys, job_id: str, root: Path, episodes: int
) -> dict[int, Any]:
    stored = {e.index: e for e in results.read_results(r, keys, job_id)}
    ds = dataset.read_dataset(str(root))
    assert [e["episode_index"] for e in ds.episodes] == list(range(episodes))
    assert [e["length"] for e in ds.episodes] == [stored[i].length for i in range(episodes)]
    assert [e["success"] for e in ds.episodes] == [stored[i].success for i in range(episodes)]
    assert ds.num_frames == sum(e.length for e in stored.values())
    assert ds.frames["action"].shape == (ds.num_frames, 4)
    assert ds.frames["observation.state"].shape == (ds.num_frames, 39)
    assert ds.tasks == {0: TASK}
    assert {e["instruction"] for e in ds.episodes} == {instruction_for(TASK)} != {""}
    tables = _frames_of(root)
    for index, table in tables.items():
        n = stored[index].length
        assert table.num_rows == n
        assert table.column("frame_index").to_pylist() == list(range(n))
        assert set(table.column("episode_index").to_pylist()) == {index}
        assert table.column("next.done").to_pylist()[-1] is True
        rewards = np.asarray(table.column("next.reward").to_pylist())
        assert rewards.sum() == pytest.approx(stored[index].return_, rel=1e-5)
        assert table.column("next.success").to_pylist()[-1] == stored[index].success
    _replay(tables[5], stored[5].seed or 0)
    info = json.loads((root / dataset.INFO_PATH).read_text())  # consolidated at completion
    assert info["total_episodes"] == episodes and info["total_frames"] == ds.num_frames
    assert info["features"]["action"]["shape"] == [4]
    state = info["features"]["observation.state"]
    assert (state["dtype"], state["source_dtype"], state["obs_key"]) == (
        "float32",
        "float64",
        "state",
    )
    tasks = [json.loads(line) for line in (root / dataset.TASKS_PATH).read_text().splitlines()]
    assert [t["task"] for t in tasks] == [TASK]
    lines = (root / dataset.EPISODES_PATH).read_text().splitlines()
    assert [json.loads(line)["length"] for line in lines] == [e["length"] for e in ds.episodes]
    return tables


def _replay(table: Any, seed: int) -> None:
    """Each frame is the observation its action was computed from: replaying the recorded
    actions from the episode's reset reproduces the recorded observations and rewards."""
    states = np.asarray(table.column("observation.state").to_pylist(), np.float32)
    actions = np.asarray(table.column("action").to_pylist(), np.float32)
    with make_env(TASK, 1, max_steps=60) as env:
        obs = env.reset(np.array([0]), np.array([seed]))
        for t in range(len(actions)):
            np.testing.assert_allclose(obs["state"][0], states[t], rtol=1e-5, atol=1e-5)
            step = env.step(actions[t : t + 1])
            assert step.reward[0] == pytest.approx(table.column("next.reward")[t].as_py(), 1e-5)
            obs = step.obs


def _rerun_with_a_kill(
    settings: RedisSettings, r: redis.Redis, keys: Keys, p: Procs, args: tuple[str, ...],
    root: Path, first: dict[int, Any], episodes: int,
) -> None:  # fmt: skip
    sims = start_sims(p, 1, "--num-envs", "1", "--lease-ms", "1500")
    wait_ready(r, keys, p, sims=2, pool_name="expert")
    job_id = submit(settings, *args, "--record-dir", str(root))

    def victim() -> dict[str, Any] | None:
        for w in fleet.live_sim_workers(r, keys):
            if w.data.get("state") == "running" and 1 <= w.data.get("episodes_done", 0) <= 8:
                return w.to_dict()
        return None

    target = wait_until(victim, 60, "a worker mid-unit", p.procs)
    assert isinstance(target, dict)
    proc = next((q for q in p.procs if q.pid == target["pid"]), None)
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    assert wait_terminal(r, keys, job_id, p).state is JobState.COMPLETED
    start, end = (int(x) for x in target["unit"].split("-"))
    writers = {e.worker for e in results.read_results(r, keys, job_id)[start:end]}
    assert target["worker_id"] in writers and len(writers) == 2  # killed mid-unit, taken over
    assert sims[0].poll() is None or target["pid"] == sims[0].pid
    second = _check_dataset(r, keys, job_id, root, episodes)
    assert sorted(second) == sorted(first) == list(range(episodes))
    for index in first:  # the same frames, none duplicated or torn
        assert second[index].drop(["timestamp"]).equals(first[index].drop(["timestamp"]))
    parquet = sorted(path.name for path in (root / "data").rglob("*.parquet"))
    assert parquet == [f"episode_{i:06d}.parquet" for i in range(episodes)]


@pytest.fixture
def needs_metaworld() -> None:
    pytest.importorskip("metaworld")


@pytest.mark.slow
def test_video_of_the_first_episodes_per_task_has_one_frame_per_step(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    av = pytest.importorskip("av")
    skip_without_pusht()
    root = tmp_path / "rec"
    with procs(settings, tmp_path) as p:
        start_pool(p, "pusht", "--policy", "pusht-heuristic")
        start_sims(p, 1, "--num-envs", "2")
        wait_ready(r, keys, p, sims=1, pool_name="pusht")
        job_id = submit(
            settings, "--task", "pusht/pixels", "--pool", "pusht", "--episodes", "3",
            "--max-steps", "25", "--video", "2", "--record-dir", str(root),
        )  # fmt: skip
        assert wait_terminal(r, keys, job_id, p).state is JobState.COMPLETED
        (tmp_path / "a-file").write_text("not a directory")
        unwritable = submit(
            settings, "--task", "pusht/pixels", "--pool", "pusht", "--episodes", "1",
            "--max-steps", "5", "--record", "all", "--record-dir", str(tmp_path / "a-file" / "rec"),
        )  # fmt: skip
        failed = wait_terminal(r, keys, unwritable, p)
    assert failed.state is JobState.FAILED
    assert "cannot record episode 0 into" in failed.reason and "--record-dir" in failed.reason
    ds = dataset.read_dataset(str(root), images=True)
    assert [e["episode_index"] for e in ds.episodes] == [0, 1]  # --video 2: only those two
    assert ds.frames["observation.images.pixels"].shape == (ds.num_frames, 96, 96, 3)
    assert ds.frames["observation.agent_pos"].shape == (ds.num_frames, 2)
    for episode in ds.episodes:
        (rel,) = episode["videos"].values()
        assert rel == dataset.video_path(episode["episode_index"], "observation.images.pixels")
        data = (root / rel).read_bytes()
        with av.open(io.BytesIO(data)) as container:
            assert container.format.name.startswith("mov,mp4")
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == episode["length"]
        # the video shows the recorded frames (lossy codec: close, not equal)
        start = sum(
            e["length"] for e in ds.episodes if e["episode_index"] < episode["episode_index"]
        )
        frames = ds.frames["observation.images.pixels"][start : start + episode["length"]]
        assert np.abs(np.stack(decoded).astype(int) - frames.astype(int)).mean() < 12
    # the HTML report embeds them (data: URIs: the page stays one self-contained file)
    warnings: list[str] = []
    videos = report_data.report_data(r, keys, [job_id], warnings)["jobs"][0]["videos"]
    assert [(v["index"], v["length"]) for v in videos] == [
        (e["episode_index"], e["length"]) for e in ds.episodes
    ]
    assert not warnings
    pytest.importorskip("plotly")
    from arena_eval.cli.report_html import render_report

    page = render_report(report_data.report_data(r, keys, [job_id], warnings))
    assert page.count("<video controls") == 2 and page.count("data:video/mp4;base64,") == 2


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_meta_world_camera_video_and_a_video_without_frames_fails_readably(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    av = pytest.importorskip("av")
    from tests.gl_probe import gl_problem

    if (problem := gl_problem()) is not None:
        pytest.skip(f"no GL for a Meta-World camera here: {problem}")
    args = ("--task", TASK, "--pool", "expert", "--episodes", "2", "--max-steps", "30",
            "--video", "1")  # fmt: skip
    with procs(settings, tmp_path) as p:
        start_pool(p, "expert", *EXPERT)
        start_sims(p, 1, "--num-envs", "2")
        wait_ready(r, keys, p, sims=1, pool_name="expert")
        filmed = submit(settings, *args, "--camera", "corner", "--image-size", "64",
                        "--record-dir", str(tmp_path / "cam"))  # fmt: skip
        blind = submit(settings, *args, "--record-dir", str(tmp_path / "blind"))
        assert wait_terminal(r, keys, filmed, p).state is JobState.COMPLETED
        failed = wait_terminal(r, keys, blind, p)
    assert failed.state is JobState.FAILED
    assert "--camera" in failed.reason and "observes no image" in failed.reason
    ds = dataset.read_dataset(str(tmp_path / "cam"))
    (episode,) = ds.episodes  # --video 1 of 2 episodes: only the first is filmed and recorded
    assert episode["episode_index"] == 0
    rel = episode["videos"]["observation.images.corner_rgb"]
    with av.open(str(tmp_path / "cam" / rel)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 64)
        assert sum(1 for _ in container.decode(video=0)) == episode["length"] > 1


def test_submit_flags_resolve_the_record_dir_and_say_what_is_missing(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from typer.testing import CliRunner

    from arena_eval.broker import jobs
    from arena_eval.cli.app import app

    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    base = ["submit", "--task", TASK, "--episodes", "2", "--json"]
    out = CliRunner().invoke(app, [*base, "--pool", "a", "--record", "all"], env=env)
    assert isinstance(out.exception, ConfigError)  # main() prints it as "error: ..."
    assert "--record-dir" in str(out.exception)
    out = CliRunner().invoke(app, [*base, "--pool", "a", "--record", "most"], env=env)
    assert "'all', 'failures' or a number" in str(out.exception)
    assert r.zcard(keys.jobs()) == 0  # nothing submitted
    monkeypatch.chdir(tmp_path)
    args = [*base, "--pool", "a", "--pool", "b", "--record", "failures", "--video", "1"]
    out = CliRunner().invoke(app, [*args, "--record-dir", "rec"], env=env)
    assert out.exit_code == 0, out.output
    specs = [jobs.get_job(r, keys, j).spec for j in json.loads(out.stdout)["job_ids"]]
    assert [s.record_dir for s in specs] == [str(tmp_path / "rec" / p) for p in "ab"]
    assert {(s.record, s.video) for s in specs} == {("failures", 1)}
    human = CliRunner().invoke(app, ["status", json.loads(out.stdout)["job_ids"][0]], env=env)
    assert human.exit_code == 0, human.output
    assert "recording  record failures, video 1 per task ->" in human.stdout
    assert str(tmp_path / "rec" / "a") in "".join(
        line.strip() for line in human.stdout.splitlines()
    )
    out = CliRunner().invoke(app, [*base, "--pool", "a", "--record", "3",
                                   "--record-dir", "memory://bucket/rec"], env=env)  # fmt: skip
    assert out.exit_code == 0, out.output
    assert jobs.get_job(r, keys, json.loads(out.stdout)["job_id"]).spec.record_dir == (
        "memory://bucket/rec"
    )


def test_an_episode_exists_only_once_committed_on_any_fsspec_filesystem() -> None:
    """What a kill -9 can leave (a temporary file, frames without their marker) is never
    read; writing the episode again commits it once. On fsspec's memory filesystem."""
    from arena_eval.broker.episode import EpisodeResult
    from arena_eval.broker.spec import FieldSpec
    from arena_eval.sim_worker.recording import EpisodeWriter, Trajectory

    url = f"memory://rec-{os.getpid()}"
    spec = JobSpec(task=TASK, pool="p", episodes=4, record="all", record_dir=url)
    writer = EpisodeWriter(spec, "job", {"state": FieldSpec("float64", (39,))}, 4)
    rng = np.random.default_rng(0)

    def episode(index: int, n: int) -> tuple[Trajectory, EpisodeResult]:
        traj = Trajectory(
            index, {"state": rng.normal(size=(n, 39))}, rng.normal(size=(n, 4)).astype("f4"),
            np.ones(n, "f4"), np.arange(n) == n - 1, np.zeros(n, bool),
        )  # fmt: skip
        return traj, EpisodeResult(index=index, length=n, seed=index, return_=float(n), task=TASK)

    writer.write(*episode(0, 5), "reach")
    store = dataset.DatasetStore(url)
    store.write_atomic(dataset.data_path(1), b"frames of an episode killed before its marker")
    with store.fs.open(store.path("meta/episodes/.tmp-dead-episode_000002.json"), "wb") as fh:
        fh.write(b'{"torn')
    ds = dataset.read_dataset(url)
    assert [e["episode_index"] for e in ds.episodes] == [0] and ds.num_frames == 5
    writer.write(*episode(1, 7), "reach")  # the re-run replaces the leftover
    writer.write(*episode(1, 7), "reach")  # and a second commit does not duplicate it
    ds = dataset.read_dataset(url)
    assert [e["length"] for e in ds.episodes] == [5, 7]
    assert ds.frames["action"].shape == (12, 4)
    assert np.array_equal(ds.frames["episode_index"], [0] * 5 + [1] * 7)
    with pytest.raises(ConfigError, match="cannot open recording location 'nosuchfs://x'"):
        dataset.DatasetStore("nosuchfs://x")
    info = dataset.finalize(url)
    assert (info["total_episodes"], info["total_frames"]) == (2, 12)
    assert json.loads(store.read_bytes(dataset.INFO_PATH)) == info


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_a_suite_records_the_first_n_of_each_task_under_the_jobs_indices(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    tasks = (TASK, "metaworld/door-open-v3")
    root = tmp_path / "suite"
    with procs(settings, tmp_path) as p:
        start_pool(p, "multi", "--policy", "metaworld-expert")  # serves every Meta-World task
        start_sims(p, 1, "--num-envs", "2")
        wait_ready(r, keys, p, sims=1, pool_name="multi")
        job_id = submit(
            settings, "--task", tasks[0], "--task", tasks[1], "--pool", "multi", "--episodes", "3",
            "--max-steps", "40", "--record", "2", "--record-dir", str(root),
        )  # fmt: skip
        assert wait_terminal(r, keys, job_id, p).state is JobState.COMPLETED
    stored = {e.index: e for e in results.read_results(r, keys, job_id)}
    ds = dataset.read_dataset(str(root))
    assert [e["episode_index"] for e in ds.episodes] == [0, 1, 3, 4]  # task k's i: 3k + i, i < 2
    assert [e["task"] for e in ds.episodes] == [tasks[0]] * 2 + [tasks[1]] * 2
    assert [e["task_episode"] for e in ds.episodes] == [0, 1, 0, 1]
    assert [e["length"] for e in ds.episodes] == [stored[i].length for i in (0, 1, 3, 4)]
    assert ds.tasks == {0: tasks[0], 1: tasks[1]}
    lengths = [e["length"] for e in ds.episodes]
    expected = np.repeat([0, 0, 1, 1], lengths)
    assert np.array_equal(ds.frames["task_index"], expected)
    assert {e["instruction"] for e in ds.episodes} == {instruction_for(t) for t in tasks}
