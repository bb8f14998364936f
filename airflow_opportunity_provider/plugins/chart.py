"""The outcomes of a sync's last runs as an inline SVG: one stacked bar per run, oldest on the left.

Drawn on the server, so the page needs no script or chart library; every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from airflow_opportunity_provider.plugins.views import OUTCOME_NAMES, RunRow

# One colour per outcome; the same in the chart's legend and the pages' count badges.
OUTCOME_COLOURS = {
    "created": "#2e7d32",
    "updated": "#1565c0",
    "unchanged": "#9e9e9e",
    "rejected": "#ef6c00",
    "unknown": "#6a1b9a",
    "failed": "#c62828",
    "reconciled": "#00897b",
    "adopted": "#795548",
}
MAX_RUNS = 30
_WIDTH, _HEIGHT = 720, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 12, 56


def _nice_ceiling(value: int) -> int:
    """The axis maximum: ``value`` rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def outcomes_chart(runs: Sequence[RunRow], max_runs: int = MAX_RUNS) -> Markup:
    """An ``<svg>`` element with one bar per run, stacked by outcome, for the newest ``max_runs`` runs.

    :param runs: the runs, newest first (as :class:`~.views.SyncDetail` holds them).
    :param max_runs: how many runs to draw at most.
    """
    shown = list(reversed(list(runs)[:max_runs]))
    label = f"Rows per outcome in the last {len(shown)} runs" if shown else "No runs recorded yet"
    parts = [
        f'<svg class="outcome-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'width="100%" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
    ]
    plot_width, plot_height = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    base = _TOP + plot_height
    top = _nice_ceiling(max((run.counts.total for run in shown), default=0))
    parts.append(
        f'<line x1="{_LEFT}" y1="{base}" x2="{_WIDTH - _RIGHT}" y2="{base}" stroke="#888" stroke-width="1"/>'
        f'<text x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end" font-size="11" fill="#555">{top}</text>'
        f'<text x="{_LEFT - 6}" y="{base}" text-anchor="end" font-size="11" fill="#555">0</text>'
    )
    if not shown:
        parts.append(
            f'<text x="{_LEFT + plot_width / 2:.1f}" y="{_TOP + plot_height / 2:.1f}" text-anchor="middle" '
            f'font-size="13" fill="#555">{escape(label)}</text>'
        )
    # Runs of one day are told apart by their time, runs of several days by their date.
    days = {run.started_at.date() for run in shown if run.started_at}
    tick_format = "%H:%M" if len(days) <= 1 else "%m-%d"
    slot = plot_width / max(len(shown), 1)
    bar = max(min(slot * 0.7, 48.0), 2.0)
    for index, run in enumerate(shown):
        x = _LEFT + index * slot + (slot - bar) / 2
        when = run.started_at.strftime("%Y-%m-%d %H:%M") if run.started_at else "time unknown"
        parts.append(f'<g class="run" data-run-id="{escape(run.run_id)}">')
        y = float(base)
        for outcome, count in run.counts.items():
            if count <= 0:
                continue
            height = count / top * plot_height
            y -= height
            parts.append(
                f'<rect class="bar bar-{outcome}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{height:.1f}" fill="{OUTCOME_COLOURS[outcome]}">'
                f"<title>{escape(when)}: {outcome} {count}</title></rect>"
            )
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{base + 14}" text-anchor="middle" font-size="10" '
            f'fill="#555">{escape(run.started_at.strftime(tick_format) if run.started_at else "?")}</text></g>'
        )
    legend_y = _HEIGHT - 14
    step = (_WIDTH - _LEFT) / len(OUTCOME_NAMES)
    for index, outcome in enumerate(OUTCOME_NAMES):
        x = _LEFT + index * step
        parts.append(
            f'<rect x="{x:.1f}" y="{legend_y - 9}" width="10" height="10" fill="{OUTCOME_COLOURS[outcome]}"/>'
            f'<text x="{x + 14:.1f}" y="{legend_y}" font-size="11" fill="#333">{outcome}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
