"""Read episodes recorded by ``submit --record`` (LeRobotDataset layout) for training.

Why a reader here and not ``sim_worker.recording``: the two workers never
import each other, and the layout is a published format -- parquet frames
plus meta JSON -- so plain pyarrow reads it (imported lazily: a sim-only
install never needs this module). An episode counts only when its commit
marker ``meta/episodes/episode_XXXXXX.json`` exists (the recorder writes it
last, by atomic rename), so a job still running, or one whose sim crashed,
yields only whole episodes.

Column names map back to the sim's observation keys: ``observation.state`` ->
``state``, ``observation.images.pixels`` -> ``pixels`` (PNG bytes, decoded
with Pillow to uint8 ``(H, W, 3)``). Vectors are stored as float32; the dtype
the *sim* sends, which the served spec must name, is the feature's
``source_dtype`` in ``meta/info.json`` where the recorder wrote one, else
float64 (what gymnasium Box observations are), unless ``obs_dtypes`` says.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.policy_worker.training.data import Episode

__all__ = ["RecordedData", "load_recorded", "obs_key"]

_OBS = "observation."
_IMAGES = "observation.images."


def obs_key(column: str) -> str | None:
    """The sim's observation key of a parquet column, or None for a non-observation."""
    if column.startswith(_IMAGES):
        return column[len(_IMAGES) :]
    if column.startswith(_OBS):
        return column[len(_OBS) :]
    return None


class RecordedData:
    """Episodes of one recording directory, with the dtypes the sim sent."""

    def __init__(self, episodes: list[Episode], dtypes: dict[str, str], root: Path) -> None:
        self.episodes = episodes
        self.dtypes = dtypes
        self.root = root


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            f"reading a recording needs pyarrow ({exc}): pip install pyarrow "
            "(or arena-eval[record])"
        ) from None
    return pq


def _decode_png(cells: Iterable[Any], key: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigError(
            f"image observation {key!r} is stored as PNG; decoding it needs Pillow ({exc}): "
            "pip install pillow"
        ) from None
    frames = []
    for cell in cells:
        data = cell.get("bytes") if isinstance(cell, Mapping) else cell
        if not isinstance(data, bytes):
            raise ConfigError(f"image column {key!r}: a frame has no PNG bytes")
        with Image.open(io.BytesIO(data)) as img:
            frames.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return np.stack(frames)


def _source_dtypes(root: Path) -> dict[str, str]:
    info = root / "meta" / "info.json"
    if not info.is_file():
        return {}
    try:
        features = json.loads(info.read_text("utf-8")).get("features", {})
    except (OSError, ValueError):
        return {}
    out = {}
    for column, feat in features.items():
        key = obs_key(column)
        if key is not None and isinstance(feat, Mapping) and feat.get("source_dtype"):
            out[key] = str(feat["source_dtype"])
    return out


def _committed(root: Path) -> list[int]:
    markers = sorted((root / "meta" / "episodes").glob("episode_*.json"))
    return [int(m.stem.split("_", 1)[1]) for m in markers]


def load_recorded(
    root: str | Path,
    *,
    images: Iterable[str] = (),
    obs_dtypes: Mapping[str, str] | None = None,
    task: str | None = None,
    success_only: bool = False,
) -> RecordedData:
    """Whole episodes under ``root``; image keys are decoded only if named in ``images``."""
    root = Path(root).expanduser()
    if not (root / "meta").is_dir():
        raise ConfigError(
            f"--data {str(root)!r} is not a recording (no meta/ directory): record one with "
            "arena-eval submit ... --record all --record-dir DIR"
        )
    wanted_images = set(images)
    pq = _pyarrow()
    tasks: dict[int, str] = {}
    tasks_file = root / "meta" / "tasks.jsonl"
    if tasks_file.is_file():
        for line in tasks_file.read_text("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                tasks[int(row["task_index"])] = str(row["task"])
    episodes: list[Episode] = []
    for index in _committed(root):
        meta = json.loads((root / "meta" / "episodes" / f"episode_{index:06d}.json").read_text())
        ep_task = str(meta.get("task") or (meta.get("tasks") or [""])[0])
        success = meta.get("success")
        if (task is not None and ep_task != task) or (success_only and not success):
            continue
        path = root / "data" / f"chunk-{index // 1000:03d}" / f"episode_{index:06d}.parquet"
        table = pq.read_table(path)
        obs: dict[str, np.ndarray] = {}
        for column in table.column_names:
            key = obs_key(column)
            if key is None:
                continue
            if column.startswith(_IMAGES):
                if key in wanted_images:
                    obs[key] = _decode_png(table.column(column).to_pylist(), key)
                continue
            obs[key] = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
        actions = np.asarray(table.column("action").to_pylist(), dtype=np.float32)
        if not ep_task and "task_index" in table.column_names and table.num_rows:
            ep_task = tasks.get(int(table.column("task_index")[0].as_py()), "")
        episodes.append(
            Episode(obs, actions, task=ep_task, success=success, index=index, extra=meta)
        )
    missing = wanted_images - (set(episodes[0].obs) if episodes else set())
    if episodes and missing:
        raise ConfigError(
            f"--image {sorted(missing)}: the recording has no such image "
            f"(its observations: {sorted(episodes[0].obs)})"
        )
    if not episodes:
        raise ConfigError(
            f"--data {str(root)!r} holds no committed episode"
            + (f" of task {task!r}" if task else "")
            + (" that succeeded" if success_only else "")
        )
    dtypes = {k: ("uint8" if k in wanted_images else "float64") for k in episodes[0].obs}
    dtypes.update(_source_dtypes(root))
    dtypes.update(obs_dtypes or {})
    return RecordedData(episodes, dtypes, root)
