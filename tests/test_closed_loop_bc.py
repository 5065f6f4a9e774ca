"""The loop closed: record expert episodes through the fabric, train BC, serve it, evaluate.

Everything is real and goes through the same commands a user types: a
``metaworld-expert`` pool and a sim worker record 50 episodes of
``metaworld/reach-v3`` (``submit --record all``, seeds 0-49), ``train bc``
trains a chunked MLP on them, ``policy serve --policy torch`` serves the
checkpoint unchanged, and a job on 20 *held-out* seeds (1000-1019) must
succeed at least 80% of the time. The image variant does the same on
``pusht/pixels`` with the heuristic pusher as the demonstrator and a CNN;
its frames go through shared memory in both jobs, and its success rate is
reported (written to ``bc_pusht_result.json`` next to the test's logs and
printed), not asserted: the scripted heuristic itself rarely succeeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import pool, shm_trust
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from tests.pusht_probe import skip_without_pusht
from tests.worker_procs import Procs, procs, wait_until

pytest.importorskip("torch")
pytest.importorskip("pyarrow")
pytest.importorskip("metaworld")

TASK = "metaworld/reach-v3"


def _submit(settings: RedisSettings, *args: str) -> dict[str, Any]:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    out = CliRunner().invoke(app, ["submit", *args, "--wait", "--json"], env=env)
    assert out.exit_code == 0, out.output
    final: dict[str, Any] = json.loads(out.stdout)
    return final


def _train(data: Path, out: Path, *args: str) -> dict[str, Any]:
    res = CliRunner().invoke(
        app, ["train", "bc", "--data", str(data), "--out", str(out), *args, "--json"]
    )
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    summary: dict[str, Any] = json.loads(res.stdout)
    return summary


def _serve(p: Procs, r: redis.Redis, keys: Keys, name: str, *args: str) -> None:
    proc = p.cli("policy", "serve", "--pool", name, *args, name=name)
    wait_until(lambda: pool.live_workers(r, keys, name), 120, f"the {name} pool", [proc])


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_bc_from_recorded_expert_episodes_succeeds_on_held_out_seeds(
    settings: RedisSettings, r: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(settings.prefix)
    data, ckpt = tmp_path / "demos", tmp_path / "reach.pt2"
    with procs(settings, tmp_path) as p:
        p.cli("sim", "serve", "--num-envs", "10", name="sim")
        _serve(p, r, keys, "expert", "--policy", "metaworld-expert")
        demos = _submit(
            settings, "--task", TASK, "--pool", "expert", "--episodes", "50", "--seed", "0",
            "--num-envs", "10", "--record", "all", "--record-dir", str(data),
        )  # fmt: skip
        assert demos["episodes_done"] == 50
        summary = _train(data, ckpt, "--chunk", "4", "--epochs", "100")
        spec = summary["spec"]
        assert summary["episodes"] == 50 and spec["action_shape"] == [4, 4]
        assert spec["tasks"] == [TASK]
        assert spec["observations"] == {"state": {"dtype": "float64", "shape": [39]}}
        assert summary["final_loss"] < 0.05 and Path(summary["loss_svg"]).is_file()
        _serve(p, r, keys, "bc", "--policy", "torch", "--policy-arg", f"path={ckpt}",
               "--policy-arg", "device=cpu", "--policy-arg", "threads=1")  # fmt: skip
        final = _submit(
            settings, "--task", TASK, "--pool", "bc", "--episodes", "20", "--seed", "1000",
            "--num-envs", "10",
        )  # fmt: skip
    assert final["episodes_done"] == 20
    rate = final["successes"] / final["episodes_done"]
    print(
        f"BC reach-v3: {rate:.2f} success on 20 held-out seeds, trained in "
        f"{summary['train_seconds']} s, checkpoint {summary['checkpoint_bytes']} bytes"
    )
    assert rate >= 0.8, final


def _last_id(r: redis.Redis, stream: str) -> str:
    if not r.exists(stream):
        return "0-0"
    value = r.xinfo_stream(stream)["last-generated-id"]
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not shm_trust.available(), reason="no usable shm directory on this host")
def test_image_bc_on_pusht_trains_and_evaluates_through_shared_memory(
    settings: RedisSettings, r: redis.Redis, tmp_path: Path
) -> None:
    skip_without_pusht()
    pytest.importorskip("PIL", reason="decoding recorded PNG frames needs Pillow")
    keys = Keys(settings.prefix)
    host_stream = keys.pool_host_requests("bc-img", shm_trust.host_id())
    data, ckpt = tmp_path / "demos", tmp_path / "pusht.pt2"
    # 4 slots in lockstep: each request carries 4 frames of 96x96x3 (110 KB), over the
    # 64 KiB the inline path takes, so every request is a shared-memory ticket
    common = ("--task", "pusht/pixels", "--num-envs", "4", "--max-steps", "80")
    with procs(settings, tmp_path) as p:
        p.cli("sim", "serve", "--num-envs", "4", name="sim")
        _serve(p, r, keys, "heuristic", "--policy", "pusht-heuristic")
        _submit(settings, *common, "--pool", "heuristic", "--episodes", "16", "--seed", "0",
                "--record", "all", "--record-dir", str(data))  # fmt: skip
        summary = _train(data, ckpt, "--image", "pixels", "--chunk", "8", "--epochs", "15")
        spec = summary["spec"]
        assert summary["episodes"] == 16 and spec["action_shape"] == [8, 2]
        assert spec["observations"]["pixels"] == {"dtype": "uint8", "shape": [96, 96, 3]}
        _serve(p, r, keys, "bc-img", "--policy", "torch", "--policy-arg", f"path={ckpt}",
               "--policy-arg", "device=cpu", "--policy-arg", "threads=1")  # fmt: skip
        final = _submit(settings, *common, "--pool", "bc-img", "--episodes", "8",
                        "--seed", "1000")  # fmt: skip
    assert final["episodes_done"] == 8
    assert _last_id(r, host_stream) != "0-0"  # frames went through shared memory
    assert _last_id(r, keys.pool_requests("bc-img")) == "0-0"  # and never inline
    report = {
        "task": "pusht/pixels",
        "demos": 16,
        "eval_episodes": final["episodes_done"],
        "successes": final["successes"],
        "success_rate": final["successes"] / final["episodes_done"],
        "train_seconds": summary["train_seconds"],
        "checkpoint_bytes": summary["checkpoint_bytes"],
        "final_loss": summary["final_loss"],
    }
    (tmp_path / "bc_pusht_result.json").write_text(json.dumps(report, indent=2))
    print(f"BC pusht/pixels (CNN, 16 heuristic demos): {json.dumps(report)}")
