"""Write one ended episode in LeRobot's layout: parquet frames, mp4s, then its marker.

Why this order (``arena_eval.broker.dataset`` has the layout): the frames and videos go
first, each under a temporary name renamed to the episode's deterministic name; the marker
``meta/episodes/episode_EEEEEE.json`` goes last and is what makes the episode exist. A sim
worker killed -9 anywhere in between leaves at most unreferenced files that the re-run of
the episode (its result was never stored, so it runs again) replaces under the same names:
no duplicate, no torn episode. The results store is written after the recording, so an
episode with a result always has its recording.

pyarrow builds the table (fixed-size float32 lists for vectors, LeRobot's ``{bytes, path}``
PNG struct for images, PIL encodes the PNGs); nothing here hand-writes parquet.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from arena_eval.broker import dataset as ds
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.spec import FieldSpec
from arena_eval.sim_worker.recording.capture import Trajectory
from arena_eval.sim_worker.recording.video import encode_mp4

#: Control rate per task family (frames per second of the dataset and its videos):
#: Meta-World steps 5 MuJoCo substeps of 2.5 ms; gym-pusht runs at 10 Hz.
FPS = {"metaworld": 80.0, "pusht": 10.0}
DEFAULT_FPS = 30.0


def fps_for(task: str) -> float:
    return FPS.get(task.split("/", 1)[0], DEFAULT_FPS)


class EpisodeWriter:
    """Writes the recorded episodes of one job's unit (one task) under ``spec.record_dir``."""

    def __init__(
        self,
        spec: JobSpec,
        job_id: str,
        obs_spec: dict[str, FieldSpec],
        action_dim: int,
        *,
        task: str | None = None,
    ) -> None:
        """``spec`` is the whole job's (global episode indices, task positions); ``task`` is
        the unit's task (its frame rate), ``spec.task`` if not given."""
        if not spec.record_dir:
            raise ConfigError("this job records nothing (no record_dir)")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                "this job records episodes (--record/--video) but this sim worker lacks "
                "pyarrow: pip install 'arena-eval[record]' on the sim nodes"
            ) from None
        self._pa, self._pq = pa, pq
        self.spec, self.job_id = spec, job_id
        self.store = ds.DatasetStore(spec.record_dir)
        self._check_owner(self.store.owner())
        self.fps = fps_for(task or spec.task)
        self.images = [k for k, f in obs_spec.items() if ds.is_image(f.shape, f.dtype)]
        self.features: dict[str, dict[str, Any]] = {}
        for key, f in obs_spec.items():
            image = key in self.images
            self.features[ds.feature_name(key, image=image)] = {
                "dtype": ds.IMAGE_DTYPE if image else "float32",
                "shape": list(f.shape), "obs_key": key, "source_dtype": f.dtype,
            }  # fmt: skip
        self.features[ds.ACTION] = {"dtype": "float32", "shape": [action_dim]}
        for name, dtype in ((ds.REWARD, "float32"), (ds.DONE, "bool"), (ds.SUCCESS, "bool"),
                            (ds.TIMESTAMP, "float32"), (ds.FRAME_INDEX, "int64"),
                            (ds.EPISODE_INDEX, "int64"), (ds.TASK_INDEX, "int64")):  # fmt: skip
            self.features[name] = {"dtype": dtype, "shape": [1]}

    def _check_owner(self, owner: str | None) -> None:
        """ConfigError if the dataset holds another job's episodes (names would collide)."""
        if owner is not None and owner != self.job_id:
            raise ConfigError(
                f"{self.spec.record_dir!r} already holds job {owner}'s recording; record "
                "each job into its own directory: submit again with a new --record-dir"
            )

    def wants_video(self, task_episode: int) -> bool:
        return task_episode < self.spec.video and bool(self.images)

    def write(self, traj: Trajectory, result: EpisodeResult, instruction: str) -> dict[str, Any]:
        """Write the episode (frames, videos, marker last); return its marker."""
        index = int(result.index)
        task_episode = self.spec.locate(index)[2]
        existing = self.store.marker(index)  # a re-run of our own episode replaces it
        if existing is not None:
            self._check_owner(str(existing.get("job_id")))
        self.store.write_atomic(ds.data_path(index), self._parquet(traj, index, result.task))
        videos = {}
        if self.wants_video(task_episode):
            for key in self.images:
                video_key = ds.feature_name(key, image=True)
                rel = ds.video_path(index, video_key)
                self.store.write_atomic(rel, encode_mp4(_rgb(traj.obs[key]), self.fps))
                videos[video_key] = rel
        marker = {
            ds.EPISODE_INDEX: index,
            ds.TASK_INDEX: self.spec.tasks.index(result.task),
            "task": result.task,
            "instruction": instruction,
            "task_episode": task_episode,
            "length": traj.length,
            "success": bool(result.success),
            "return": result.return_,
            "seed": result.seed,
            "job_id": self.job_id,
            "fps": self.fps,
            "robot_type": result.task.split("/", 1)[0],
            "videos": videos,
            "features": self.features,
            "stats": _stats(traj, self.images),
        }
        self.store.write_atomic(ds.marker_path(index), json.dumps(marker, sort_keys=True).encode())
        return marker

    def _parquet(self, traj: Trajectory, index: int, task: str) -> bytes:
        pa = self._pa
        n = traj.length
        cols: dict[str, Any] = {}
        for key, values in traj.obs.items():
            if key in self.images:
                cols[ds.feature_name(key, image=True)] = pa.array(
                    [{"bytes": _png(frame), "path": None} for frame in values],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                )
            else:
                cols[ds.feature_name(key, image=False)] = _vectors(pa, values.reshape(n, -1))
        cols[ds.ACTION] = _vectors(pa, traj.actions.reshape(n, -1))
        cols[ds.REWARD] = pa.array(traj.rewards, pa.float32())
        cols[ds.DONE] = pa.array(traj.dones, pa.bool_())
        cols[ds.SUCCESS] = pa.array(traj.successes, pa.bool_())
        cols[ds.TIMESTAMP] = pa.array(np.arange(n, dtype=np.float32) / np.float32(self.fps))
        cols[ds.FRAME_INDEX] = pa.array(np.arange(n, dtype=np.int64))
        cols[ds.EPISODE_INDEX] = pa.array(np.full(n, index, np.int64))
        cols[ds.TASK_INDEX] = pa.array(np.full(n, self.spec.tasks.index(task), np.int64))
        buf = io.BytesIO()
        self._pq.write_table(pa.table(cols), buf)
        return buf.getvalue()


def _vectors(pa: Any, values: np.ndarray) -> Any:
    """(T, D) -> a fixed-size list<float32> column of T rows."""
    flat = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    pixels = np.ascontiguousarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _rgb(frames: np.ndarray) -> np.ndarray:
    if frames.shape[-1] == 3:
        return frames
    if frames.shape[-1] == 1:
        return np.repeat(frames, 3, axis=-1)
    return frames[..., :3]


def _stats(traj: Trajectory, images: list[str]) -> dict[str, dict[str, list[float]]]:
    """LeRobot's per-episode stats (min/max/mean/std/count) of the non-image features."""
    arrays = {ds.feature_name(k, image=False): v for k, v in traj.obs.items() if k not in images}
    arrays[ds.ACTION] = traj.actions
    out = {}
    for name, values in arrays.items():
        flat = np.asarray(values, np.float64).reshape(values.shape[0], -1)
        out[name] = {
            "min": flat.min(0).tolist(), "max": flat.max(0).tolist(),
            "mean": flat.mean(0).tolist(), "std": flat.std(0).tolist(), "count": [len(flat)],
        }  # fmt: skip
    return out
