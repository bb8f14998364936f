"""Bulk loads with the sync state on SQLite, PostgreSQL and MariaDB, side by side in one run.

Run with ``make bench`` (or ``python -m benchmarks.state_databases --rows 100000``; add
``--rows 1000000`` for the large table). The mock CRM runs as its own process with no added
latency, the warehouse is a SQLite file, and each database gets state tables of its own, dropped
afterwards; a server that does not answer gets a dash. For each database, three runs of one
sync: the first load (every row a create), a run after 1% of the rows changed, and a run with no
change; plus the peak RSS of the process after the no-change run. Targets: the first load with
PostgreSQL state at >= 80% of the SQLite-state rate; a no-change run scanning >= 50,000 rows/s on
PostgreSQL and >= 100,000 rows/s on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from benchmarks.bulk_load import (
    CRM_CONN,
    SQL,
    WAREHOUSE_CONN,
    machine,
    mock_crm_process,
    reset_mock,
    set_connections,
)
from benchmarks.state_db import _connections

CHANGED_SHARE = 0.01
# The table's columns, in order, and the names --databases accepts (in any case).
DATABASES = ("SQLite", "PostgreSQL", "MariaDB")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _load(conn_id: str, table: str, concurrency: int) -> dict[str, Any]:
    """Run one sync into ``table`` on ``conn_id`` and return its summary."""
    from airflow_opportunity_provider.sample_warehouse import V1_MAPPING
    from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
    from airflow_opportunity_provider.transfers.summary import OpportunitySyncError

    operator = SqlToOpportunityOperator(
        task_id="bench",
        sql=SQL,
        sql_conn_id=WAREHOUSE_CONN,
        key_columns="opportunity_ref",
        mapping=V1_MAPPING,
        opportunity_conn_id=CRM_CONN,
        state_conn_id=conn_id,
        state_table=table,
        sync_name="bench",
        concurrency=concurrency,
        progress_interval=0,
        count_source_rows=False,
    )
    try:
        return operator.execute({})
    except OpportunitySyncError as error:
        return error.summary


def _change(warehouse: Path, share: float) -> int:
    """Rename ``share`` of the warehouse's rows (again: each call changes them anew), so that
    exactly those rows are sent again."""
    with sqlite3.connect(warehouse) as connection:
        step = max(1, round(1 / share))
        cursor = connection.execute(
            "UPDATE crm_opportunities SET name = name || ' (changed)' WHERE rowid % ? = 0", (step,)
        )
        return int(cursor.rowcount)


def measure(database: str, conn_id: str, base_url: str, warehouse: Path, concurrency: int) -> dict[str, Any]:
    """The three runs on one state database, in a child process so that its RSS is its own."""
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.state_databases",
            *("--child", conn_id, base_url, str(warehouse), "--concurrency", str(concurrency)),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    figures: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    figures["database"] = database
    return figures


def child(conn_id: str, base_url: str, warehouse: Path, concurrency: int) -> None:
    """Measure the first load, a 1%-changed run and a no-change run; print them as JSON."""
    set_connections(base_url, warehouse)
    reset_mock(base_url)
    table = f"bench_{uuid.uuid4().hex[:8]}"
    figures: dict[str, Any] = {}
    try:
        first = _load(conn_id, table, concurrency)
        figures["rows"] = first["rows"]
        figures["first_created"] = first["created"]
        figures["first_seconds"] = first["duration_seconds"]
        changed = _change(warehouse, CHANGED_SHARE)
        again = _load(conn_id, table, concurrency)
        figures["changed_rows"] = changed
        figures["changed_sent"] = again["updated"]
        figures["changed_seconds"] = again["duration_seconds"]
        same = _load(conn_id, table, concurrency)
        figures["unchanged"] = same["unchanged"]
        figures["same_seconds"] = same["duration_seconds"]
        figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        _drop(conn_id, table)
    print(json.dumps(figures))


def _drop(conn_id: str, table: str) -> None:
    from airflow_opportunity_provider.transfers.source import get_db_hook

    hook = get_db_hook(conn_id, purpose="benchmark")
    connection = hook.get_conn()
    try:
        cursor = connection.cursor()
        for suffix in ("", "_rejects", "_runs", "_leases"):
            cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
        connection.commit()
    finally:
        connection.close()


def _cell(value: float | None, unit: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def report(results: Sequence[dict[str, Any]], rows: int) -> bool:
    """Print the table; return whether every target that could be measured was met."""
    by_name = {result["database"]: result for result in results}
    columns = list(DATABASES)

    def rate(result: dict[str, Any] | None, seconds: str, count: str) -> float | None:
        if result is None or not result.get(seconds):
            return None
        return float(result[count]) / float(result[seconds])

    lines: list[tuple[str, ...]] = [("Figure", *columns)]
    firsts = {name: rate(by_name.get(name), "first_seconds", "first_created") for name in columns}
    scans = {name: rate(by_name.get(name), "same_seconds", "unchanged") for name in columns}
    lines.append(("First load (every row a create), rows/s", *(_cell(firsts[n], "") for n in columns)))
    lines.append(
        (
            f"Run with {CHANGED_SHARE:.0%} of the rows changed, seconds",
            *(_cell(by_name[n]["changed_seconds"] if n in by_name else None, " s", 2) for n in columns),
        )
    )
    lines.append(
        (
            "Run with no change, seconds",
            *(_cell(by_name[n]["same_seconds"] if n in by_name else None, " s", 2) for n in columns),
        )
    )
    lines.append(("Run with no change, rows scanned/s", *(_cell(scans[n], "") for n in columns)))
    lines.append(
        (
            "Peak RSS of the process (three runs), MiB",
            *(_cell(by_name[n]["peak_rss_mib"] if n in by_name else None, "", 1) for n in columns),
        )
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = "+-" + "-+-".join("-" * width for width in widths) + "-+"
    print(f"State databases, {rows:,} rows, mock CRM with no added latency: {machine()}")
    print(f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.")
    print(rule)
    for number, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |")
        if number == 0:
            print(rule.replace("-", "="))
    print(rule)
    checks: list[tuple[str, bool]] = []
    for name, result in by_name.items():
        if result["first_created"] != result["rows"] or result["changed_sent"] != result["changed_rows"]:
            checks.append((f"{name}: every row created once, exactly the changed rows sent", False))
        if result["unchanged"] != result["rows"]:
            checks.append((f"{name}: the no-change run found every row unchanged", False))
    if firsts.get("SQLite") and firsts.get("PostgreSQL"):
        share = firsts["PostgreSQL"] / firsts["SQLite"]  # type: ignore[operator]
        checks.append((f"first load with PostgreSQL state at {share:.0%} of SQLite's (>= 80%)", share >= 0.8))
    if scans.get("PostgreSQL"):
        checks.append(
            (
                f"no-change scan on PostgreSQL {scans['PostgreSQL']:,.0f} rows/s (>= 50,000)",
                scans["PostgreSQL"] >= 50_000,
            )
        )  # type: ignore[operator]
    if scans.get("SQLite"):
        checks.append(
            (
                f"no-change scan on SQLite {scans['SQLite']:,.0f} rows/s (>= 100,000)",
                scans["SQLite"] >= 100_000,
            )
        )  # type: ignore[operator]
    for text, passed in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {text}")
    return all(passed for _, passed in checks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.state_databases", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the warehouse table")
    parser.add_argument("--concurrency", type=int, default=16, help="the operator's concurrency")
    parser.add_argument("--databases", default=",".join(DATABASES), help="which state databases to measure")
    parser.add_argument(
        "--child", nargs=3, metavar=("CONN_ID", "BASE_URL", "WAREHOUSE"), help=argparse.SUPPRESS
    )
    options = parser.parse_args(argv)
    if options.child:
        conn_id, base_url, warehouse = options.child
        child(conn_id, base_url, Path(warehouse), options.concurrency)
        return 0

    from airflow_opportunity_provider.sample_warehouse import create_sqlite

    wanted = {name.strip().lower() for name in options.databases.split(",")}
    unknown = wanted - {name.lower() for name in DATABASES}
    if unknown:
        parser.error(f"--databases: unknown {sorted(unknown)}; choose from {', '.join(DATABASES)}")
    with tempfile.TemporaryDirectory(prefix="opportunity-state-bench-") as folder_name:
        folder = Path(folder_name)
        connections = {
            name: conn_id for name, conn_id in _connections(folder).items() if name.lower() in wanted
        }
        warehouse = folder / "warehouse.db"
        _log(f"writing a warehouse of {options.rows:,} rows")
        create_sqlite(warehouse, v1_count=options.rows, v2_ids=1)
        results = []
        with mock_crm_process() as base_url:
            for name, conn_id in connections.items():
                _log(f"{name}: first load, 1% changed, no change")
                started = time.perf_counter()
                results.append(measure(name, conn_id, base_url, warehouse, options.concurrency))
                _log(f"{name}: done in {time.perf_counter() - started:.0f} s")
        return 0 if report(results, options.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
