"""Recording: one job per dataset, video paths never taken from a marker, and a state pool's
job records the camera frames it does not send (review fixes F3, F5, F8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from arena_eval.broker import dataset, report_data
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import FieldSpec
from arena_eval.sim_worker.recording import EpisodeWriter, Trajectory
from tests.pusht_probe import skip_without_pusht
from tests.test_jobs import start_pool, start_sims, submit, wait_ready, wait_terminal
from tests.worker_procs import procs

pytest.importorskip("pyarrow.parquet")

TASK = "metaworld/reach-v3"


def _episode(index: int, n: int) -> tuple[Trajectory, EpisodeResult]:
    rng = np.random.default_rng(index)
    traj = Trajectory(
        index, {"state": rng.normal(size=(n, 39))}, rng.normal(size=(n, 4)).astype("f4"),
        np.ones(n, "f4"), np.arange(n) == n - 1, np.zeros(n, bool),
    )  # fmt: skip
    return traj, EpisodeResult(index=index, length=n, seed=index, return_=float(n), task=TASK)


def _files(root: Path) -> dict[str, bytes]:
    """The episodes' files (frames, markers, videos; not the consolidated meta files that
    ``finalize`` may still be rewriting)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
        if p.is_file() and p.parent != root / "meta"
    }  # fmt: skip


def test_a_second_job_cannot_record_over_the_first_ones_episodes(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    spec = JobSpec(task=TASK, pool="p", episodes=4, record="all", record_dir=str(root))
    obs = {"state": FieldSpec("float64", (39,))}
    late = EpisodeWriter(spec, "job-b", obs, 4)  # opened while the dir was still empty
    first = EpisodeWriter(spec, "job-a", obs, 4)
    first.write(*_episode(0, 5), "reach")
    before = _files(root)
    with pytest.raises(ConfigError, match=r"already holds job job-a's recording.*--record-dir"):
        EpisodeWriter(spec, "job-b", obs, 4)
    with pytest.raises(ConfigError, match="already holds job job-a's recording"):
        late.write(*_episode(0, 9), "reach")
    assert _files(root) == before  # job-a's episode is untouched
    first.write(*_episode(0, 5), "reach")  # its own re-run is fine
    EpisodeWriter(spec, "job-a", obs, 4).write(*_episode(1, 3), "reach")
    assert [e["length"] for e in dataset.read_dataset(str(root)).episodes] == [5, 3]


def test_the_report_builds_video_paths_from_the_layout_never_from_a_marker(
    tmp_path: Path,
) -> None:
    root = tmp_path / "rec"
    secret = tmp_path / "secret.mp4"  # outside the dataset; looks like an mp4 to the report
    secret.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"SECRET-CREDENTIALS" * 4)
    store = dataset.DatasetStore(str(root))
    marker = {
        "episode_index": 0, "task": TASK, "success": False, "length": 3, "job_id": "j",
        "videos": {
            "observation.images.corner_rgb": "../secret.mp4",
            "../../secret": "../secret.mp4",
            "observation.images.x/../../..": "../secret.mp4",
        },
    }  # fmt: skip
    store.write_atomic(dataset.marker_path(0), json.dumps(marker).encode())
    spec = {"record_dir": str(root), "video": 1, "task": TASK, "episodes": 1}
    warnings: list[str] = []
    videos = report_data.video_data(spec, warnings)
    assert [v["camera"] for v in videos] == ["observation.images.corner_rgb"]
    (video,) = videos
    assert video["path"] == store.path(dataset.video_path(0, "observation.images.corner_rgb"))
    assert Path(video["path"]).resolve().is_relative_to(root.resolve())
    pytest.importorskip("plotly")
    from arena_eval.cli.report_html import videos_html

    page = videos_html([{"job_id": "j", "videos": videos, "spec": spec}])
    assert "data:video/mp4" not in page  # no file at the layout's path: linked, not embedded
    # a planted file at the layout's path that is no mp4 is not embedded either
    fake = root / dataset.video_path(0, "observation.images.corner_rgb")
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"SECRET-CREDENTIALS")
    assert "data:video/mp4" not in videos_html([{"job_id": "j", "videos": videos, "spec": spec}])


@pytest.mark.slow
def test_a_state_pool_records_the_frames_it_is_not_sent_and_a_second_job_into_it_fails(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    skip_without_pusht()
    root = tmp_path / "rec"
    args = ("--task", "pusht/pixels", "--pool", "pusht", "--max-steps", "8",
            "--record", "all", "--record-dir", str(root))  # fmt: skip
    with procs(settings, tmp_path) as p:
        # a state pool: it takes agent_pos, not the pixels the job records
        start_pool(p, "pusht", "--policy", "zero", "--policy-arg", "action_shape=1x2",
                   "--policy-arg", "obs=agent_pos:float64:2")  # fmt: skip
        start_sims(p, 1, "--num-envs", "2")
        wait_ready(r, keys, p, sims=1, pool_name="pusht")
        first = submit(settings, *args, "--episodes", "2")
        job = wait_terminal(r, keys, first, p)
        assert job.state is JobState.COMPLETED, job.reason
        before = _files(root)
        second = submit(settings, *args, "--episodes", "3")
        failed = wait_terminal(r, keys, second, p)
    assert failed.state is JobState.FAILED
    assert f"already holds job {first}'s recording" in failed.reason
    assert "--record-dir" in failed.reason
    assert _files(root) == before  # the first job's episodes are untouched
    ds = dataset.read_dataset(str(root), images=True)
    assert [e["episode_index"] for e in ds.episodes] == [0, 1]
    assert {e["job_id"] for e in ds.episodes} == {first}
    assert ds.frames["observation.images.pixels"].shape == (ds.num_frames, 96, 96, 3)
