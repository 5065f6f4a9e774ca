"""Recorded episodes on disk: the LeRobotDataset (v2.1) layout, its reader and its finalizer.

Why here, in the broker: the recorder writes on the sim side, but readers (the ``train bc``
trainer in the policy worker, the report in the CLI) must not import the sim worker. The
layout's names live in one place and the reader needs nothing heavy at import time
(pyarrow, fsspec and PIL are imported when a dataset is read: the ``[record]`` extra).

Why LeRobot's layout (``docs/recording.md``): one parquet file of frames per episode plus
JSON(-lines) metadata is what LeRobot's ``LeRobotDataset`` and plain pyarrow/pandas open,
and one file per episode is what makes recording write-once per episode:

* ``data/chunk-CCC/episode_EEEEEE.parquet`` and the episode's mp4s are written under a
  temporary name and renamed to their deterministic name (the job's global episode index),
  so a re-run of an episode after a crash replaces, never duplicates, and a reader never
  sees half a file;
* ``meta/episodes/episode_EEEEEE.json`` is written last, the same way: it is the episode's
  commit marker. An episode exists iff its marker does; :func:`read_dataset` scans markers.
* ``meta/info.json``, ``episodes.jsonl``, ``tasks.jsonl`` and ``episodes_stats.jsonl`` are
  LeRobot's consolidated files: :func:`finalize` rebuilds them from the markers (the sim
  worker that completes a job calls it; calling it again is harmless), each atomically.

Episode indices are the job's global indices, so with ``--record failures`` or ``N`` they
are sparse; LeRobot's dataset-wide frame ``index`` column is left out for the same reason
(``read_dataset`` numbers frames in order).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_eval.broker.errors import ConfigError

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
MARKER_DIR = "meta/episodes"
MARKER_PATH = MARKER_DIR + "/episode_{episode_index:06d}.json"
INFO_PATH = "meta/info.json"
EPISODES_PATH = "meta/episodes.jsonl"
TASKS_PATH = "meta/tasks.jsonl"
STATS_PATH = "meta/episodes_stats.jsonl"

#: Per-frame columns besides observations (LeRobot's names).
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"
TIMESTAMP = "timestamp"
FRAME_INDEX = "frame_index"
EPISODE_INDEX = "episode_index"
TASK_INDEX = "task_index"
#: LeRobot's dtype for a frame stored as PNG bytes in a ``{bytes, path}`` struct.
IMAGE_DTYPE = "image"


def feature_name(obs_key: str, *, image: bool) -> str:
    """Column of an env observation key: ``state`` -> ``observation.state``, a camera
    frame ``corner_rgb`` -> ``observation.images.corner_rgb``, ``agent_pos`` ->
    ``observation.agent_pos``."""
    return f"observation.images.{obs_key}" if image else f"observation.{obs_key}"


#: A video key as the recorder names it (``feature_name`` of a camera key): one path segment,
#: so a path built from it stays under its dataset root.
_VIDEO_KEY = re.compile(r"observation\.images\.[A-Za-z0-9_-]+")


def is_video_key(name: object) -> bool:
    """Whether ``name`` is a camera feature name the layout uses (``observation.images.X``,
    X letters, digits, ``_`` or ``-``): readers build video paths only from such names, never
    from a path a marker claims."""
    return isinstance(name, str) and _VIDEO_KEY.fullmatch(name) is not None


def is_image(shape: tuple[int, ...], dtype: Any) -> bool:
    """Whether a per-row observation of this shape and dtype is a camera frame (HxWx3 uint8)."""
    return len(shape) == 3 and shape[-1] in (1, 3, 4) and np.dtype(dtype) == np.uint8


def episode_chunk(episode_index: int) -> int:
    return episode_index // CHUNKS_SIZE


def data_path(episode_index: int) -> str:
    return DATA_PATH.format(episode_chunk=episode_chunk(episode_index), episode_index=episode_index)


def video_path(episode_index: int, video_key: str) -> str:
    return VIDEO_PATH.format(
        episode_chunk=episode_chunk(episode_index), video_key=video_key, episode_index=episode_index
    )


def marker_path(episode_index: int) -> str:
    return MARKER_PATH.format(episode_index=episode_index)


class DatasetStore:
    """A dataset root on any fsspec filesystem, with write-once (temp name + rename) writes."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "recordings need the [record] extra: pip install 'arena-eval[record]'"
            ) from None
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:  # e.g. s3:// without s3fs installed
            raise ConfigError(f"cannot open recording location {url!r}: {exc}") from None

    @property
    def is_local(self) -> bool:
        """Whether the dataset is on this machine's filesystem (paths are local paths)."""
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def marker(self, episode_index: int) -> dict[str, Any] | None:
        """The episode's marker, or None if it is not committed."""
        rel = marker_path(episode_index)
        if not self.exists(rel):
            return None
        data: dict[str, Any] = json.loads(self.read_bytes(rel))
        return data

    def owner(self) -> str | None:
        """The job id of a committed episode here (the first marker listed), None if none.

        A dataset holds one job's recording: its episode names are that job's indices, so a
        second job writing into it would replace the first one's episodes."""
        base = self.path(MARKER_DIR)
        if not self.fs.exists(base):
            return None
        for name in sorted(self.fs.ls(base, detail=False)):
            leaf = str(name).rsplit("/", 1)[-1]
            if leaf.startswith("episode_") and leaf.endswith(".json"):
                job_id = json.loads(self.read_bytes(f"{MARKER_DIR}/{leaf}")).get("job_id")
                return None if job_id is None else str(job_id)
        return None

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` so a reader sees the old file, the whole new one, or none."""
        final = self.path(rel)
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.fs.mv(tmp, final)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as fh:
            data: bytes = fh.read()
        return data

    def markers(self) -> list[dict[str, Any]]:
        """Every committed episode's marker, by episode index (temporary files skipped)."""
        base = self.path(MARKER_DIR)
        if not self.fs.exists(base):
            return []
        out = []
        for name in sorted(self.fs.ls(base, detail=False)):
            leaf = str(name).rsplit("/", 1)[-1]
            if leaf.startswith("episode_") and leaf.endswith(".json"):
                out.append(json.loads(self.read_bytes(f"{MARKER_DIR}/{leaf}")))
        return sorted(out, key=lambda m: int(m[EPISODE_INDEX]))


@dataclass
class Dataset:
    """A recorded dataset read back: committed episodes and their frames, in episode order.

    ``frames`` maps a column to an array stacked over every frame of every episode:
    vectors ``(T, D)`` float32, scalars ``(T,)``, images ``(T, H, W, C)`` uint8 (only when
    read with ``images=True``). ``tasks`` maps ``task_index`` to the env task name.
    """

    episodes: list[dict[str, Any]]
    frames: dict[str, np.ndarray]
    features: dict[str, dict[str, Any]]
    tasks: dict[int, str] = field(default_factory=dict)
    fps: float = 0.0

    @property
    def num_frames(self) -> int:
        return int(sum(int(e["length"]) for e in self.episodes))


def read_dataset(
    url: str, *, images: bool = False, columns: Iterable[str] | None = None
) -> Dataset:
    """Read the committed episodes under ``url`` (local dir or fsspec URL) with pyarrow.

    Works before the job is finalized (it scans the per-episode markers). ``columns`` limits
    the frame columns read; image columns are decoded only when ``images`` is true.
    """
    pq = _pyarrow_parquet()
    store = DatasetStore(url)
    markers = store.markers()
    if not markers:
        raise ConfigError(
            f"no recorded episode under {url!r}; record a job into it with "
            "`arena-eval submit ... --record all --record-dir DIR`"
        )
    features: dict[str, dict[str, Any]] = dict(markers[0].get("features", {}))
    wanted = [
        name for name, f in features.items()
        if (columns is None or name in set(columns)) and (images or f["dtype"] != IMAGE_DTYPE)
    ]  # fmt: skip
    parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for marker in markers:
        table = pq.read_table(io.BytesIO(store.read_bytes(data_path(int(marker[EPISODE_INDEX])))))
        for name in wanted:
            parts[name].append(_column(table.column(name).to_pylist(), features[name]))
    frames = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    tasks = {int(m[TASK_INDEX]): str(m["task"]) for m in markers}
    episodes = [{k: v for k, v in m.items() if k != "features"} for m in markers]
    return Dataset(episodes, frames, features, tasks, float(markers[0].get("fps", 0.0)))


def _column(values: list[Any], feature: Mapping[str, Any]) -> np.ndarray:
    if feature["dtype"] == IMAGE_DTYPE:
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(v["bytes"]))) for v in values])
    return np.asarray(values, dtype=np.dtype(feature["dtype"]))


def finalize(url: str) -> dict[str, Any]:
    """Rebuild LeRobot's consolidated meta files from the episode markers; return info.json.

    Idempotent: the sim worker that completes a job calls it, anyone may call it again.
    """
    store = DatasetStore(url)
    markers = store.markers()
    if not markers:
        return {}
    first = markers[0]
    tasks: dict[int, dict[str, Any]] = {}
    for m in markers:
        tasks[int(m[TASK_INDEX])] = {
            TASK_INDEX: int(m[TASK_INDEX]), "task": m["task"], "instruction": m["instruction"]
        }  # fmt: skip
    videos = sorted({key for m in markers for key in m.get("videos", {})})
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": first.get("robot_type", "sim"),
        "total_episodes": len(markers),
        "total_frames": int(sum(int(m["length"]) for m in markers)),
        "total_tasks": len(tasks),
        "total_videos": int(sum(len(m.get("videos", {})) for m in markers)),
        "total_chunks": len({episode_chunk(int(m[EPISODE_INDEX])) for m in markers}),
        "chunks_size": CHUNKS_SIZE,
        "fps": first.get("fps", 0.0),
        "splits": {"train": f"0:{len(markers)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "video_keys": videos,
        "features": first.get("features", {}),
        "job_ids": sorted({str(m.get("job_id", "")) for m in markers}),
    }
    episodes = [
        {EPISODE_INDEX: m[EPISODE_INDEX], "tasks": [m["task"]], "length": m["length"],
         **{k: m[k] for k in ("instruction", "success", "return", "seed", "job_id", "videos")}}
        for m in markers
    ]  # fmt: skip
    stats = [{EPISODE_INDEX: m[EPISODE_INDEX], "stats": m.get("stats", {})} for m in markers]
    store.write_atomic(EPISODES_PATH, _jsonl(episodes))
    store.write_atomic(TASKS_PATH, _jsonl([tasks[k] for k in sorted(tasks)]))
    store.write_atomic(STATS_PATH, _jsonl(stats))
    store.write_atomic(INFO_PATH, json.dumps(info, indent=2).encode())
    return info


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, sort_keys=True).encode() + b"\n" for row in rows)


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "reading recordings needs pyarrow (the [record] extra): "
            "pip install 'arena-eval[record]'"
        ) from None
    return pq
