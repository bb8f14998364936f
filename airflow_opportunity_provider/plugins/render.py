"""The pages' HTML: Jinja2 templates beside this module, with every value escaped.

Autoescaping is on for every template, so anything read from a state database (keys, codes,
messages, sync names) reaches the page as text, never as markup.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from airflow_opportunity_provider.plugins.chart import OUTCOME_COLOURS, outcomes_chart
from airflow_opportunity_provider.plugins.views import OUTCOME_NAMES

TEMPLATES = Path(__file__).resolve().parent / "templates"


def when(value: datetime | None) -> str:
    """A time as the pages show it, in UTC; a dash when unknown.

    :param value: an aware datetime, or ``None``.
    """
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    """A duration in seconds, or a dash when unknown.

    :param value: seconds, or ``None``.
    """
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"


def number(value: int | None) -> str:
    """A count with thousands separators, or a dash when it was not recorded.

    :param value: the count, or ``None``.
    """
    return "—" if value is None else f"{value:,}"


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(when=when, seconds=seconds, number=number)
    environment.globals.update(
        outcome_names=OUTCOME_NAMES, outcome_colours=OUTCOME_COLOURS, outcomes_chart=outcomes_chart
    )
    return environment


_ENVIRONMENT = _environment()


def render(template: str, **context: Any) -> str:
    """The HTML of one page.

    :param template: the template's file name, e.g. ``"syncs.html"``.
    :param context: the values the template uses.
    """
    return _ENVIRONMENT.get_template(template).render(**context)
