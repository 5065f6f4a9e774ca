"""Render ``arena-eval report``'s data (``broker.report_data``) as ONE self-contained HTML file.

Why plotly, inline: the report is mailed, attached to a pull request, opened on a cluster with
no internet, and archived next to a checkpoint, so it must work from the file alone. Plotly is
a well-kept library whose charts stay interactive (hover for exact figures, zoom on a
histogram), and ``include_plotlyjs=True`` puts plotly.js itself in the page once (about
4.7 MB), so nothing is fetched from a CDN. It is the ``[report]`` extra, imported only here:
sim and policy nodes never need it.

Every figure is drawn from the data dict alone; strings from Redis (job ids, task names, spec
values, reasons) are escaped in our own HTML, and plotly escapes them in its JSON.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from arena_eval.broker.errors import ConfigError

#: Colours per job (plotly's default qualitative palette).
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692")
#: Colours of the parts of the time split, in ``report_data.SPLIT_PARTS`` order, then sim.
SPLIT_COLOURS = {
    "infer": "#636efa",
    "decode": "#19d3f3",
    "encode": "#00cc96",
    "queue": "#ffa15a",
    "transport": "#ab63fa",
    "sim": "#ef553b",
}
_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f8; } .muted { color: #777; } .num { text-align: right; }
"""


def _plotly() -> tuple[Any, Any]:
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "arena-eval report needs plotly, which is not installed: "
            "pip install 'arena-eval[report]'"
        ) from exc
    return go, pio


def label(job: dict[str, Any], jobs: Sequence[dict[str, Any]]) -> str:
    """A short name for a job in legends: its pool (and id when pools repeat)."""
    pool = str(job.get("spec", {}).get("pool") or job["job_id"])
    pools = [str(j.get("spec", {}).get("pool") or j["job_id"]) for j in jobs]
    return pool if pools.count(pool) == 1 else f"{pool} ({job['job_id']})"


def render_report(data: dict[str, Any]) -> str:
    """The whole page as one string (see the module docstring)."""
    go, pio = _plotly()
    jobs = data["jobs"]
    figures = [
        ("Success per task (95% Wilson interval)", success_figure(go, jobs)),
        ("Episode lengths", length_figure(go, jobs)),
        ("Round-trip latency", latency_figure(go, jobs)),
        ("Where the time goes (mean per policy request)", split_figure(go, jobs)),
        ("Throughput over time", throughput_figure(go, jobs)),
    ]
    if data.get("comparison"):
        figures.insert(1, ("Paired comparison", comparison_figure(go, data["comparison"])))
    body: list[str] = [f"<h1>arena-eval report</h1><p class=muted>{_header(data)}</p>"]
    body.append(_summary_table(jobs))
    first = True
    for title, fig in figures:
        if title == "Paired comparison":
            body.append(f"<h2>{title}</h2>{_comparison_table(data['comparison'], jobs)}")
        else:
            body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(pio.to_html(fig, full_html=False, include_plotlyjs=first, config=_CONFIG))
        first = False
    if any(job.get("videos") for job in jobs):
        body.append("<h2>Episode videos</h2>" + videos_html(jobs))
    body.append("<h2>Job specs</h2>" + "".join(_spec_table(j) for j in jobs))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<title>arena-eval report</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


#: Bytes of mp4 embedded in the page at most (as data: URIs, so the file stays self-contained);
#: videos past it, or not on this machine, are linked instead.
EMBED_BUDGET = 16 * 1024 * 1024


def videos_html(jobs: Sequence[dict[str, Any]]) -> str:
    """Each job's ``--video`` episodes: embedded players while the budget lasts, then links."""
    budget = EMBED_BUDGET
    parts: list[str] = []
    for job in jobs:
        if not job.get("videos"):
            continue
        parts.append(f"<h3>{html.escape(label(job, jobs))}</h3><div>")
        for video in job["videos"]:
            caption = html.escape(
                f"{video['task']} episode {video['index']} ({video['camera']}): "
                f"{'success' if video['success'] else 'failure'}, {video['length']} steps"
            )
            data = _video_bytes(video.get("path"), budget)
            link = f'<a href="{html.escape(str(video["url"]))}">{caption}</a>'
            if data is None:
                parts.append(f"<p>{link}</p>")
                continue
            budget -= len(data)
            src = "data:video/mp4;base64," + base64.b64encode(data).decode()
            parts.append(
                "<figure style='display:inline-block;margin:0.4em'>"
                f'<video controls muted loop width=240 src="{src}"></video>'
                f"<figcaption class=muted>{link}</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts)


def _video_bytes(path: str | None, budget: int) -> bytes | None:
    """The local mp4 at ``path`` if it fits in ``budget`` (None: link it instead).

    Only an ``.mp4`` file that starts like one (an ISO-BMFF ``ftyp`` box) is embedded: the
    page may be shared, so nothing else on this machine ends up inside it."""
    if not path or not path.endswith(".mp4"):
        return None
    try:
        file = Path(path)
        if file.stat().st_size > budget:
            return None
        data = file.read_bytes()
    except OSError:
        return None
    return data if data[4:8] == b"ftyp" else None


def _header(data: dict[str, Any]) -> str:
    ids = ", ".join(html.escape(j["job_id"]) for j in data["jobs"])
    return f"jobs {ids} &middot; generated {_when(data.get('generated'))}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt(value: Any, spec: str = "{:.3f}") -> str:
    return "-" if value is None else spec.format(value)


def _interval(
    values: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
) -> dict[str, Any]:
    """Plotly's asymmetric error bars for intervals ``[low, high]`` around ``values``."""
    up, down = [], []
    for v, lo, hi in zip(values, lows, highs, strict=True):
        up.append(None if v is None or hi is None else hi - v)
        down.append(None if v is None or lo is None else v - lo)
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down}


# -- figures ----------------------------------------------------------------------------
def success_figure(go: Any, jobs: Sequence[dict[str, Any]]) -> Any:
    """Grouped bars: per task, each job's success rate with its Wilson interval."""
    fig = go.Figure()
    for k, job in enumerate(jobs):
        rows = job["tasks"]
        rates = [row["success_rate"] for row in rows]
        fig.add_trace(
            go.Bar(
                name=label(job, jobs),
                x=[row["task"] for row in rows],
                y=rates,
                marker_color=PALETTE[k % len(PALETTE)],
                error_y=_interval(
                    rates, [row["wilson_low"] for row in rows], [row["wilson_high"] for row in rows]
                ),
                customdata=[[row["successes"], row["episodes"]] for row in rows],
                hovertemplate="%{x}: %{y:.3f} (%{customdata[0]}/%{customdata[1]})",
            )
        )
    fig.update_layout(barmode="group", yaxis={"range": [0, 1.05], "title": "success rate"})
    return fig


def comparison_figure(go: Any, comparison: dict[str, Any]) -> Any:
    """The difference B - A per task and overall, with its interval."""
    rows = [*comparison.get("tasks", []), comparison["overall"]]
    names = [str(row["task"] or "overall") for row in rows]
    names[-1] = "overall"
    diffs = [row.get("diff") for row in rows]
    fig = go.Figure(
        go.Scatter(
            x=diffs,
            y=names,
            mode="markers",
            marker={"size": 10, "color": PALETTE[0]},
            error_x=_interval(
                diffs, [r.get("diff_low") for r in rows], [r.get("diff_high") for r in rows]
            ),
            hovertemplate="%{y}: %{x:+.3f}",
            name="B - A",
        )
    )
    fig.add_vline(x=0, line_dash="dot", line_color="#888")
    fig.update_layout(
        xaxis={"title": "success rate B - A (95% interval)"},
        height=max(250, 40 * len(rows) + 120),
    )
    return fig


def length_figure(go: Any, jobs: Sequence[dict[str, Any]]) -> Any:
    """Box plots of episode length per task, one colour per job."""
    fig = go.Figure()
    for k, job in enumerate(jobs):
        eps = [e for e in job["episodes"] if e.get("length") is not None]
        fig.add_trace(
            go.Box(
                name=label(job, jobs),
                x=[e["task"] for e in eps],
                y=[e["length"] for e in eps],
                marker_color=PALETTE[k % len(PALETTE)],
                boxpoints="all" if len(eps) <= 200 else "outliers",
                jitter=0.4,
            )
        )
    fig.update_layout(boxmode="group", yaxis={"title": "episode length (steps)"})
    return fig


def latency_figure(go: Any, jobs: Sequence[dict[str, Any]]) -> Any:
    """The round-trip histogram (log buckets) of each job."""
    fig = go.Figure()
    for k, job in enumerate(jobs):
        buckets = job["latency"]
        fig.add_trace(
            go.Bar(
                name=label(job, jobs),
                x=[b["ms"] for b in buckets],
                y=[b["count"] for b in buckets],
                width=[b["high_ms"] - b["low_ms"] for b in buckets],
                marker_color=PALETTE[k % len(PALETTE)],
                opacity=0.75,
                customdata=[[b["low_ms"], b["high_ms"]] for b in buckets],
                hovertemplate="%{customdata[0]:.3g}-%{customdata[1]:.3g} ms: %{y} requests",
            )
        )
    fig.update_layout(
        barmode="overlay",
        xaxis={"type": "log", "title": "round trip (ms, log scale)"},
        yaxis={"title": "requests"},
    )
    return fig


def split_figure(go: Any, jobs: Sequence[dict[str, Any]]) -> Any:
    """Stacked bars per job: mean ms per request in the policy worker (infer, decode, encode),
    in the pool's queue, in transport, and in the simulators (when recorded)."""
    fig = go.Figure()
    names = [label(j, jobs) for j in jobs]
    parts = [*SPLIT_COLOURS]
    for part in parts:
        values = []
        for job in jobs:
            split = job["split"]
            n = split["requests"] or 0
            total = split["sim_ms"] if part == "sim" else split["policy_ms"].get(part)
            values.append(total / n if n and total is not None else None)
        recorded = any(v is not None for v in values)
        fig.add_trace(
            go.Bar(
                name=part if recorded or part != "sim" else "sim (not recorded)",
                y=names,
                x=values,
                orientation="h",
                marker_color=SPLIT_COLOURS[part],
                hovertemplate=f"{part}: %{{x:.3f}} ms per request",
            )
        )
    fig.update_layout(
        barmode="stack",
        xaxis={"title": "ms per request (sim: env time per request, where recorded)"},
        legend={"orientation": "h", "y": -0.35},
        height=max(300, 60 * len(jobs) + 200),
    )
    return fig


def throughput_figure(go: Any, jobs: Sequence[dict[str, Any]]) -> Any:
    """Cumulative episodes and env steps finished against seconds since each job started."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for k, job in enumerate(jobs):
        eps = sorted(
            (e for e in job["episodes"] if e.get("finished_at") is not None),
            key=lambda e: e["finished_at"],
        )
        start = job.get("started") or (eps[0]["finished_at"] if eps else 0.0)
        xs = [e["finished_at"] - start for e in eps]
        steps, total = [], 0
        for e in eps:
            total += int(e.get("length") or 0)
            steps.append(total)
        colour = PALETTE[k % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=xs, y=list(range(1, len(eps) + 1)), mode="lines+markers",
                name=f"{label(job, jobs)}: episodes", line={"color": colour, "shape": "hv"},
            ),
            secondary_y=False,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=xs, y=steps, mode="lines", name=f"{label(job, jobs)}: env steps",
                line={"color": colour, "dash": "dot", "shape": "hv"},
            ),
            secondary_y=True,
        )  # fmt: skip
    fig.update_xaxes(title_text="seconds since the job started")
    fig.update_yaxes(title_text="episodes finished", secondary_y=False)
    fig.update_yaxes(title_text="env steps in finished episodes", secondary_y=True)
    return fig


# -- tables -----------------------------------------------------------------------------
def _summary_table(jobs: Sequence[dict[str, Any]]) -> str:
    head = (
        "<tr><th>job</th><th>pool</th><th>state</th><th>episodes</th><th>suite score</th>"
        "<th>steps/s</th><th>round trip p50 / p99 (ms)</th></tr>"
    )
    rows = []
    for job in jobs:
        s = job["summary"]
        suite = job.get("suite") or {}
        score = suite.get("score", job["metrics"].get("success_rate"))
        low = suite.get("low", job["metrics"].get("wilson_low"))
        high = suite.get("high", job["metrics"].get("wilson_high"))
        state = job["state"] + (f" ({job['reason']})" if job.get("reason") else "")
        rows.append(
            f"<tr><td>{html.escape(job['job_id'])}</td>"
            f"<td>{html.escape(str(job['spec'].get('pool', '-')))}</td>"
            f"<td>{html.escape(state)}</td>"
            f"<td class=num>{len(job['episodes'])}/{job['total']}</td>"
            f"<td class=num>{_fmt(score)} [{_fmt(low)}, {_fmt(high)}]</td>"
            f"<td class=num>{_fmt(s.get('steps_per_s'), '{:.1f}')}</td>"
            f"<td class=num>{_fmt(s.get('round_trip_p50_ms'), '{:.2f}')} / "
            f"{_fmt(s.get('round_trip_p99_ms'), '{:.2f}')}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _comparison_table(comparison: dict[str, Any], jobs: Sequence[dict[str, Any]]) -> str:
    a, b = (label(j, jobs) for j in jobs[:2])
    note = (
        "Episodes paired one to one by (task, episode): exact McNemar test on the pairs."
        if comparison.get("paired")
        else "Not paired ("
        + html.escape(str(comparison.get("why_unpaired") or "different suites or seeds"))
        + "): two-proportion test."
    )
    head = (
        f"<tr><th>task</th><th>A: {html.escape(a)}</th><th>B: {html.escape(b)}</th>"
        "<th>B - A [95%]</th><th>test</th><th>p</th><th>A only / B only</th></tr>"
    )
    rows = []
    for row in [*comparison.get("tasks", []), comparison["overall"]]:
        rows.append(
            f"<tr><td>{html.escape(str(row.get('task') or 'overall'))}</td>"
            f"<td class=num>{_fmt(row.get('rate_a'))}</td>"
            f"<td class=num>{_fmt(row.get('rate_b'))}</td>"
            f"<td class=num>{_fmt(row.get('diff'), '{:+.3f}')} [{_fmt(row.get('diff_low'))}, "
            f"{_fmt(row.get('diff_high'))}]</td>"
            f"<td>{html.escape(str(row.get('test', '-')))}</td>"
            f"<td class=num>{_fmt(row.get('p_value'), '{:.4g}')}</td>"
            f"<td class=num>{row.get('a_only', '-')} / {row.get('b_only', '-')}</td></tr>"
        )
    return f"<p>{note}</p><table>{head}{''.join(rows)}</table>"


def _spec_table(job: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_spec_value(v))}</td></tr>"
        for k, v in sorted(job["spec"].items())
    ]
    rows.append(f"<tr><th>created</th><td>{_when(job.get('created'))}</td></tr>")
    rows.append(f"<tr><th>finished</th><td>{_when(job.get('finished'))}</td></tr>")
    return f"<h3>{html.escape(job['job_id'])}</h3><table>{''.join(rows)}</table>"


def _spec_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if len(value) <= 60 else json.dumps(value)
    return "-" if value is None else str(value)
