"""``arena-eval train bc``: chunked targets, normalisation inside the checkpoint, the CNN,
export that the unchanged ``torch`` built-in serves, the loss curve, and the CLI on a
recording written in the LeRobot layout with pyarrow.

Real torch, real pyarrow, real Pillow PNGs; the closed loop through a pool is in
``test_closed_loop_bc.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from typer.testing import CliRunner

from arena_eval.broker.errors import ConfigError
from arena_eval.cli.app import app
from arena_eval.policy_worker.builtins.torch_policy import TorchPolicy
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.training.data import Episode, chunk_targets
from arena_eval.policy_worker.training.export import curve_paths, export_policy
from arena_eval.policy_worker.training.trainer import BCConfig, train_bc

NO_CUDA = "no CUDA device on this machine (no device was lent to this session)"


def _line_episodes(n: int = 40, steps: int = 20, seed: int = 0) -> list[Episode]:
    """A state far from zero and unit-scale (x in [100, 101]), held for an episode (so a
    chunk is predictable from its first state); action = 50 * (x1 - x0) + 3."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        state = np.repeat(100.0 + rng.random((1, 3)), steps, axis=0)
        act = np.stack([50 * (state[:, 1] - state[:, 0]) + 3, state[:, 2] * 0], axis=1)
        eps.append(Episode({"state": state}, act.astype(np.float32), task="toy/line", index=i))
    return eps


def test_chunk_targets_pad_with_the_last_action() -> None:
    ep = Episode({"s": np.arange(3.0)[:, None]}, np.array([[1.0], [2.0], [3.0]]), index=4)
    samples = chunk_targets([ep], ["s"], 3)
    assert samples.actions[:, :, 0].tolist() == [[1, 2, 3], [2, 3, 3], [3, 3, 3]]
    assert samples.obs["s"][:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="episode 4: 's' has 2 steps, actions 3"):
        chunk_targets([Episode({"s": np.zeros((2, 1))}, np.zeros((3, 1)), index=4)], ["s"], 2)


def test_trained_mlp_exports_and_the_torch_builtin_serves_it(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    episodes = _line_episodes()
    result = train_bc(episodes, BCConfig(chunk=2, epochs=60, batch_size=64), obs_dtypes={})
    losses = [e.loss for e in result.curve]
    assert losses[-1] < 0.05 * losses[0]
    out = export_policy(tmp_path / "line.pt2", result)
    policy = TorchPolicy(str(out), device="cpu")
    spec = policy.spec()
    assert policy.checkpoint_format == "export"
    assert spec.action_shape == (2, 2) and spec.tasks == ("toy/line",)
    assert spec.observations is not None and spec.observations["state"].dtype == "float64"
    # normalisation lives in the program: raw states in, raw-scale actions out
    state = 100.0 + np.random.default_rng(9).random((5, 3))
    actions = policy.infer(Batch.of({"state": state}))
    np.testing.assert_allclose(actions[:, 0, 0], 50 * (state[:, 1] - state[:, 0]) + 3, atol=1.5)
    csv_path, svg_path = curve_paths(out)
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "epoch,loss,seconds" and len(rows) == 61
    assert "<polyline" in svg_path.read_text()


def test_cnn_policy_reads_where_the_dot_is(tmp_path: Path) -> None:
    """Action = the bright dot's pixel position: only the image tells it."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    eps = []
    for i in range(6):
        pos = rng.integers(4, 28, size=(40, 2))
        img = np.zeros((40, 32, 32, 3), np.uint8)
        img[np.arange(40), pos[:, 0], pos[:, 1]] = 255
        img[np.arange(40), pos[:, 0] + 1, pos[:, 1]] = 255
        state = np.zeros((40, 2))
        eps.append(Episode({"px": img, "s": state}, pos.astype(np.float32), index=i))
    config = BCConfig(epochs=40, batch_size=64, image_key="px", channels=16, image_shift=0)
    result = train_bc(eps, config)
    assert result.curve[-1].loss < 0.2 * result.curve[0].loss
    out = export_policy(tmp_path / "dot.pt2", result)
    policy = TorchPolicy(str(out), device="cpu")
    assert policy.spec().observations is not None
    assert policy.spec().observations["px"].dtype == "uint8"
    test = np.zeros((2, 32, 32, 3), np.uint8)
    test[0, 6:8, 20] = 255
    test[1, 24:26, 8] = 255
    got = policy.infer(Batch.of({"px": test, "s": np.zeros((2, 2))}))[:, 0]
    np.testing.assert_allclose(got, [[6, 20], [24, 8]], atol=4)


def test_cuda_is_refused_readably_without_a_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal cannot be seen here")
    with pytest.raises(ConfigError, match=r"--device cuda: CUDA is not available.*--device cpu"):
        train_bc(_line_episodes(1), BCConfig(epochs=1, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_train_on_cuda_and_serve_bf16(tmp_path: Path) -> None:
    result = train_bc(_line_episodes(), BCConfig(epochs=40, device="cuda"))
    out = export_policy(tmp_path / "line.pt2", result)
    policy = TorchPolicy(str(out), device="cuda", dtype="bf16")
    state = 100.0 + np.random.default_rng(9).random((8, 3))
    actions = policy.infer(Batch.of({"state": state}))
    np.testing.assert_allclose(actions[:, 0, 0], 50 * (state[:, 1] - state[:, 0]) + 3, atol=3)


def _write_recording(root: Path, episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """A LeRobot-layout recording as submit --record writes it (parquet + meta JSON)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    image = pytest.importorskip("PIL.Image")
    (root / "meta" / "episodes").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    for index, (state, frames, action) in enumerate(episodes):
        pngs = []
        for frame in frames:
            buf = io.BytesIO()
            image.fromarray(frame).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": ""})
        table = pa.table(
            {
                "observation.state": state.astype(np.float32).tolist(),
                "observation.images.pixels": pngs,
                "action": action.astype(np.float32).tolist(),
                "frame_index": np.arange(len(action)),
                "episode_index": np.full(len(action), index),
                "task_index": np.zeros(len(action), np.int64),
            }
        )
        pq.write_table(table, root / "data" / "chunk-000" / f"episode_{index:06d}.parquet")
        marker = {"episode_index": index, "task": "toy/dot", "success": index != 1}
        (root / "meta" / "episodes" / f"episode_{index:06d}.json").write_text(json.dumps(marker))
    # an uncommitted (torn) episode: its parquet exists, its marker does not
    pq.write_table(table, root / "data" / "chunk-000" / "episode_000009.parquet")


def test_cli_trains_from_a_recording(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    eps = []
    for _ in range(3):
        state = rng.random((12, 4))
        frames = rng.integers(0, 255, (12, 24, 24, 3), dtype=np.uint8)
        eps.append((state, frames, state[:, :2] * 2))
    data = tmp_path / "rec"
    _write_recording(data, eps)
    out = tmp_path / "pol.pt2"
    args = ["train", "bc", "--data", str(data), "--out", str(out), "--epochs", "3", "--chunk", "2"]
    res = CliRunner().invoke(app, [*args, "--image", "pixels", "--success-only", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["episodes"] == 2 and summary["samples"] == 24  # episode 1 failed; 9 torn
    assert summary["checkpoint_bytes"] == out.stat().st_size > 0
    spec = summary["spec"]
    assert spec["observations"] == {
        "state": {"dtype": "float64", "shape": [4]},
        "pixels": {"dtype": "uint8", "shape": [24, 24, 3]},
    }
    assert spec["action_shape"] == [2, 2] and spec["tasks"] == ["toy/dot"]
    policy = TorchPolicy(str(out), device="cpu")
    assert policy.infer(Batch.of({"state": eps[0][0][:3], "pixels": eps[0][1][:3]})).shape == (
        3,
        2,
        2,
    )
    plain = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s.pt2")])
    assert plain.exit_code == 0, plain.output
    assert "policy serve --pool POOL --policy torch" in plain.output
    bad = CliRunner().invoke(app, [*args, "--image", "top"])
    assert isinstance(bad.exception, ConfigError) and "no such image" in str(bad.exception)
    empty = CliRunner().invoke(app, [*args, "--data", str(tmp_path)])
    assert isinstance(empty.exception, ConfigError)
    assert "is not a recording" in str(empty.exception) and "--record all" in str(empty.exception)
