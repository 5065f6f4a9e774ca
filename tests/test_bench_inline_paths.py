"""``benchmarks/inline_paths``: every route answers, with its stages and ratios, in one run.

Only that it measures what it says (a tiny payload, two rounds): one row per route and
payload, each with a positive p50, the ratio to the seed's row of the same payload, the
stage split for the Redis routes, and Redis's command time by command. The lead times
it for real on a quiet machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from arena_eval.benchmarks import inline_paths

pytest.importorskip("zmq")

ROUTES = ["seed-zmq", "raw-zmq", "inline/off", "blob/off", "blob-recv_into/off",
          "obs-stream/off", "chunks-1K/off"]  # fmt: skip


def test_chunks_are_the_message_cut_without_loss() -> None:
    parts = [b"abc", np.arange(700, dtype=np.uint16).data, b"z" * 5000]
    whole = b"".join(bytes(p) for p in parts)
    chunks = inline_paths._slices(parts, 1024)
    assert [c.nbytes for c in chunks[:-1]] == [1024] * (len(chunks) - 1)
    assert b"".join(bytes(b) for c in chunks for b in c.buffers) == whole
    assert sum(c.nbytes for c in chunks) == len(whole)


@pytest.mark.timeout(120)
def test_one_run_reports_every_route_with_stages_and_ratios(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--redis-url", redis_url, "--payload", "proprio:off", "--rounds", "2",
            "--block", "1", "--chunk-kib", "1"]  # fmt: skip
    inline_paths.main([*args, "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = {row["route"]: row for row in result["rows"]}
    assert list(rows) == ROUTES
    assert rows["seed-zmq"]["ratio_vs_seed"] == 1.0
    assert rows["raw-zmq"]["ratio_vs_raw_zmq"] == 1.0
    for route, row in rows.items():
        assert row["payload"] == "proprio" and row["p50_ms"] > 0
        assert row["ratio_vs_seed"] > 0
        if route.endswith("zmq"):
            assert row["stages_ms"] == {}
            continue
        assert set(row["stages_ms"]) == set(inline_paths.STAGES)
        assert row["redis_cmd_ms_per_request"], route  # commandstats were read
    assert "getdel" in rows["blob/off"]["redis_cmd_ms_per_request"]
    assert "xrange" in rows["obs-stream/off"]["redis_cmd_ms_per_request"]

    inline_paths.main(args)
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:5] == ["payload", "route", "p50", "ms", "p90"]
    assert [line.split()[1] for line in table[3:]] == ROUTES
