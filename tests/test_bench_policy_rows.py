"""``arena-eval bench policy``: rows/s per batch size through a real torch pool (briefly).

Only that it measures what it says: a row per (device, batch) with positive
rates from the model alone and through a served pool, cuda reported as
skipped with its reason where there is no device. The lead times it for real.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app

pytest.importorskip("torch")


@pytest.mark.timeout(180)
def test_bench_policy_reports_rows_per_second_per_batch(settings: RedisSettings) -> None:
    import torch

    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    args = ["bench", "policy", "--batch", "1,8", "--device", "cpu,cuda", "--seconds", "0.2"]
    res = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    result = json.loads(res.stdout)
    cpu = [r for r in result["rows"] if r["device"] == "cpu"]
    assert [r["batch"] for r in cpu] == [1, 8]
    for row in cpu:
        assert row["model_rows_per_s"] > 0 and row["pool_rows_per_s"] > 0
        assert row["forward_ms"] > 0 and row["decode_ms"] > 0
    # a batch of 8 moves more rows per second than 8 requests of one row
    assert cpu[1]["pool_rows_per_s"] > cpu[0]["pool_rows_per_s"]
    if not torch.cuda.is_available():
        assert "not available" in result["skipped"]["cuda"]
    assert result["checkpoint_bytes"] > 0
