"""Bulk-load benchmark: ``SqlToOpportunityOperator`` against the mock CRM on loopback, one table of figures.

Run with ``make bench`` (``python -m benchmarks.bulk_load``). Every figure comes from this one
run: the mock CRM runs as a separate process (its own core), the warehouse and the sync state
are SQLite files in a temporary folder, and each memory figure comes from a fresh child process.

Figures: a latency-bound load (a naive ``HttpHook.run`` loop, the operator at concurrency 16,
and the bound N x latency / concurrency), a CPU-bound load with no added latency (everything
included: reading, validating, signing, sending, state writes), a rate-limited load against a
mock enforcing the limit, and the peak RSS of dry runs over 20,000 and 200,000 source rows.

The bound (c) is the time the requests themselves take, so (b) and the bare-client reference
are timed the same way: from the first request to the last row done (for the operator: its
state committed), as the engine reports it. The operator's set-up (connections, the state
tables, ``COUNT(*)``, the event loop) is a fixed cost per run, shown separately as the wall
time of the whole ``execute()``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Quiet task logs: the benchmark prints one table, not thousands of log lines.
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

V1_PATH = "/api/1.0/venue?action=addOrUpdateOpportunity"
API_KEY = "mock-api-key-0001"
API_SECRET = "mock-api-secret-0001-abcdef"
WAREHOUSE_CONN = "bench_warehouse"
CRM_CONN = "bench_crm"
HTTP_CONN = "bench_http"
STATE_CONN = "bench_state"

SQL = (
    "SELECT opportunity_ref, name, venue_id, contact_id, company_id, company_lead_contact_id, type_id, "
    "stage_id, source_id, industry_id, channel, closed_date, description FROM crm_opportunities"
)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- the mock CRM, as its own process ------------------------------------------------------


@contextmanager
def mock_crm_process() -> Iterator[str]:
    """Start ``python -m airflow_opportunity_provider.mock_crm`` on a free port; yield its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_opportunity_provider.mock_crm", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the mock CRM did not start: {line!r}")
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _mock(base_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def reset_mock(base_url: str, **faults: Any) -> None:
    """Forget stored records and counters, then inject ``faults``."""
    _mock(base_url, "/_mock/reset", {})
    _mock(base_url, "/_mock/faults", faults)


# -- what is measured ----------------------------------------------------------------------


def set_connections(base_url: str, warehouse: Path) -> None:
    host, port = base_url.rsplit(":", 1)
    os.environ[f"AIRFLOW_CONN_{CRM_CONN.upper()}"] = json.dumps(
        {
            "conn_type": "opportunity_crm",
            "host": host,
            "port": int(port),
            "login": API_KEY,
            "password": API_SECRET,
        }
    )
    os.environ[f"AIRFLOW_CONN_{HTTP_CONN.upper()}"] = json.dumps(
        {"conn_type": "http", "host": host.split("://")[1], "port": int(port), "schema": "http"}
    )
    os.environ[f"AIRFLOW_CONN_{WAREHOUSE_CONN.upper()}"] = json.dumps(
        {"conn_type": "sqlite", "host": str(warehouse)}
    )


def fresh_state(folder: Path) -> None:
    """Point the state connection at a new, empty SQLite file: every row is a create again."""
    path = folder / f"state-{time.monotonic_ns()}.db"
    os.environ[f"AIRFLOW_CONN_{STATE_CONN.upper()}"] = json.dumps({"conn_type": "sqlite", "host": str(path)})


def run_operator(folder: Path, **options: Any) -> tuple[float, dict[str, Any]]:
    """Run the operator once from a fresh state; return (wall seconds, summary).

    The summary's ``load_seconds`` runs from the first request to the last row's state
    committed (``None`` when nothing was sent).
    """
    from airflow_opportunity_provider.sample_warehouse import V1_MAPPING
    from airflow_opportunity_provider.transfers import SqlToOpportunityOperator
    from airflow_opportunity_provider.transfers.summary import OpportunitySyncError

    fresh_state(folder)
    operator = SqlToOpportunityOperator(
        task_id="bench",
        sql=SQL,
        sql_conn_id=WAREHOUSE_CONN,
        key_columns="opportunity_ref",
        mapping=V1_MAPPING,
        opportunity_conn_id=CRM_CONN,
        state_conn_id=STATE_CONN,
        sync_name="bench",
        progress_interval=0,
        **options,
    )
    started = time.perf_counter()
    try:
        summary = operator.execute({})
    except OpportunitySyncError as error:
        summary = error.summary
    return time.perf_counter() - started, summary


def _sign_by_hand(body: bytes) -> dict[str, str]:
    """What a user without this provider writes: the platform's IWS signature, from its docs."""
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    to_sign = f"POST{md5}application/json{V1_PATH}1.0ivvydate={date}".lower()
    signature = hmac.new(API_SECRET.encode(), to_sign.encode(), hashlib.sha1).hexdigest()
    return {
        "Content-Type": "application/json",
        "Content-MD5": md5,
        "IVVY-Date": date,
        "X-Api-Version": "1.0",
        "X-Api-Authorization": f"IWS {API_KEY}:{signature}",
    }


def run_naive_loop(warehouse: Path) -> float:
    """One ``HttpHook.run`` per row, as a user without this provider would write it; wall seconds."""
    import sqlite3

    from airflow.providers.http.hooks.http import HttpHook

    from airflow_opportunity_provider.sample_warehouse import V1_MAPPING

    started = time.perf_counter()
    connection = sqlite3.connect(warehouse)
    cursor = connection.execute(SQL)
    columns = [column[0] for column in cursor.description]
    hook = HttpHook(method="POST", http_conn_id=HTTP_CONN)
    for values in cursor:
        row = dict(zip(columns, values, strict=True))
        payload = {field: row[column] for field, column in V1_MAPPING.items() if row[column] is not None}
        body = json.dumps(payload).encode()
        # json.dumps writes ASCII only, so the text goes on the wire as exactly these signed bytes.
        hook.run(V1_PATH, data=body.decode("ascii"), headers=_sign_by_hand(body))
    connection.close()
    return time.perf_counter() - started


def run_bare_client(base_url: str, warehouse: Path, concurrency: int) -> float:
    """The transport alone: the async client sending every row, no state, no validation.

    Not a target: it shows how much of the bound this machine and mock allow any client.
    Returns the seconds from the first request to the last answer, as (b) is timed.
    """
    import asyncio
    import sqlite3

    from airflow_opportunity_provider.connection import OpportunitySettings
    from airflow_opportunity_provider.hooks.async_client import AsyncOpportunityClient
    from airflow_opportunity_provider.sample_warehouse import V1_MAPPING

    with sqlite3.connect(warehouse) as connection:
        cursor = connection.execute(SQL)
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor]
    payloads = [
        {field: row[column] for field, column in V1_MAPPING.items() if row[column] is not None}
        for row in rows
    ]
    settings = OpportunitySettings(
        conn_id="bare", v1_base_url=base_url, v1_api_key=API_KEY, v1_api_secret=API_SECRET
    )

    async def main() -> float:
        async with AsyncOpportunityClient(settings, concurrency=concurrency) as client:
            remaining = iter(payloads)

            async def worker() -> None:
                for payload in remaining:
                    await client.add_or_update_opportunity(payload, validate=False)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    from airflow_opportunity_provider.transfers.engine import event_loop_runner

    with event_loop_runner() as runner:
        return runner.run(main())


def memory_child(rows: int, warehouse: Path, state: Path) -> None:
    """In a fresh process: a dry run over ``rows`` source rows, then print the peak RSS (KiB)."""
    os.environ[f"AIRFLOW_CONN_{WAREHOUSE_CONN.upper()}"] = json.dumps(
        {"conn_type": "sqlite", "host": str(warehouse)}
    )
    os.environ[f"AIRFLOW_CONN_{STATE_CONN.upper()}"] = json.dumps({"conn_type": "sqlite", "host": str(state)})
    os.environ[f"AIRFLOW_CONN_{CRM_CONN.upper()}"] = json.dumps({"conn_type": "opportunity_crm"})
    _, summary = run_operator(state.parent, dry_run=True)
    if summary["rows"] != rows:
        raise SystemExit(f"the dry run saw {summary['rows']} rows, not {rows}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "peak_rss_kib": peak_kib, "created": summary["created"]}))


def measure_memory(rows: int, folder: Path) -> int:
    from airflow_opportunity_provider.sample_warehouse import create_sqlite

    warehouse = create_sqlite(folder / f"memory-{rows}.db", v1_count=rows, v2_ids=1)
    state = folder / f"memory-state-{rows}.db"
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bulk_load",
            "--memory-child",
            str(rows),
            str(warehouse),
            str(state),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(answer.stdout.strip().splitlines()[-1])["peak_rss_kib"])


# -- the table -----------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    value: str
    target: str = ""
    passed: bool | None = None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def print_table(figures: Sequence[Figure], header: str) -> None:
    rows = [("Figure", "Measured", "Target", "Result")]
    for figure in figures:
        result = "" if figure.passed is None else ("PASS" if figure.passed else "FAIL")
        rows.append((figure.name, figure.value, figure.target, result))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    line = "+-" + "-+-".join("-" * width for width in widths) + "-+"
    print(header)
    print(line)
    for number, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
        if number == 0:
            print(line.replace("-", "="))
    print(line)


def _median_run(times: int, run: Callable[[], tuple[float, dict[str, Any]]]) -> tuple[float, dict[str, Any]]:
    results = [run() for _ in range(times)]
    results.sort(key=lambda result: result[0])
    return results[len(results) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bulk_load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows of the latency- and CPU-bound loads")
    parser.add_argument(
        "--latency", type=float, default=0.020, help="added latency of the latency-bound load (s)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="the operator's concurrency")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="CPU-bound runs; the median is reported")
    parser.add_argument("--rate-limit", type=float, default=200.0, help="requests/s the mock enforces")
    parser.add_argument("--rate-rows", type=int, default=2000, help="rows of the rate-limited load")
    parser.add_argument("--memory-rows", default="20000,200000", help="source rows of the two dry runs")
    parser.add_argument(
        "--memory-child", nargs=3, metavar=("ROWS", "WAREHOUSE", "STATE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        rows, warehouse, state = args.memory_child
        memory_child(int(rows), Path(warehouse), Path(state))
        return 0

    from airflow_opportunity_provider.sample_warehouse import create_sqlite

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="opportunity-bench-") as temp, mock_crm_process() as base_url:
        folder = Path(temp)
        warehouse = create_sqlite(folder / "warehouse.db", v1_count=args.rows, v2_ids=1)
        set_connections(base_url, warehouse)
        n, latency, concurrency = args.rows, args.latency, args.concurrency

        # Latency-bound: the same N rows three ways.
        reset_mock(base_url, latency=latency)
        _log(f"latency-bound (a): naive HttpHook.run loop over {n} rows with {latency * 1000:g} ms latency")
        naive = n / run_naive_loop(warehouse)
        reset_mock(base_url, latency=latency)
        _log(f"latency-bound (b): the operator at concurrency {concurrency}")
        seconds, summary = run_operator(folder, concurrency=concurrency)
        assert summary["created"] == n, summary
        operator_rate = n / summary["load_seconds"]
        operator_wall_rate = n / seconds
        bound = concurrency / latency
        reset_mock(base_url, latency=latency)
        _log("latency-bound reference: the bare async client, no state")
        bare = n / run_bare_client(base_url, warehouse, concurrency)
        figures += [
            Figure(
                f"Latency-bound, {n} rows, {latency * 1000:g} ms: (a) naive HttpHook.run loop",
                f"{naive:,.1f} rows/s",
            ),
            Figure(
                f"  (b) SqlToOpportunityOperator, concurrency {concurrency}, first request to last commit",
                f"{operator_rate:,.1f} rows/s ({summary['load_seconds']:.2f} s)",
            ),
            Figure(
                "      the whole execute(), set-up included",
                f"{operator_wall_rate:,.1f} rows/s ({seconds:.2f} s)",
            ),
            Figure(
                "  (c) bound N x latency / concurrency",
                f"{bound:,.1f} rows/s ({n * latency / concurrency:.2f} s)",
            ),
            Figure(
                "  reference: bare AsyncOpportunityClient loop, no state or validation, timed as (b)",
                f"{bare:,.1f} rows/s ({bare / bound:.1%} of c)",
            ),
            Figure("  b / a", f"{operator_rate / naive:,.1f}x", ">= 10x", operator_rate / naive >= 10),
            Figure(
                "  b as a share of c", f"{operator_rate / bound:.1%}", ">= 80%", operator_rate / bound >= 0.80
            ),
        ]

        # CPU-bound: no added latency, everything included.
        reset_mock(base_url)
        _log(f"CPU-bound: {args.cpu_repeats} runs of {n} rows, no added latency")
        run_operator(folder, concurrency=concurrency)  # warm-up: imports, first connections
        seconds, summary = _median_run(
            args.cpu_repeats, lambda: run_operator(folder, concurrency=concurrency)
        )
        assert summary["created"] == n, summary
        cpu_rate = n / seconds
        figures.append(
            Figure(
                f"CPU-bound, {n} rows, no latency (median of {args.cpu_repeats}; read+validate+sign+send+state)",
                f"{cpu_rate:,.0f} rows/s",
                ">= 1,500 rows/s",
                cpu_rate >= 1500,
            )
        )

        # Rate-limited: the mock enforces the limit, the operator is set to the same.
        limit, rate_rows = args.rate_limit, args.rate_rows
        rate_warehouse = create_sqlite(folder / "rate.db", v1_count=rate_rows, v2_ids=1)
        set_connections(base_url, rate_warehouse)
        reset_mock(base_url, rate_limit=limit, burst=int(limit))
        time.sleep(1.5)  # the mock's bucket starts full
        _log(f"rate-limited: {rate_rows} rows, mock and operator at {limit:g} requests/s, burst {int(limit)}")
        seconds, summary = run_operator(folder, concurrency=concurrency, rate_limit=limit, burst=int(limit))
        counters = _mock(base_url, "/_mock/counters")
        answered_429 = int(counters["by_status"].get("429", 0))
        share_429 = answered_429 / max(1, counters["total_requests"])
        rate = rate_rows / seconds
        # Sustained: the rows beyond the first burst (which a full bucket lets through at once)
        # over the whole run's time: what the limit itself allowed.
        sustained = (rate_rows - int(limit)) / seconds
        figures += [
            Figure(
                f"Rate-limited, {rate_rows} rows, mock at {limit:g}/s burst {int(limit)}: (rows - burst) / time",
                f"{sustained:,.1f} rows/s = {sustained / limit:.1%} of the limit (overall {rate:,.1f}/s)",
                ">= 95% of the limit",
                sustained >= 0.95 * limit,
            ),
            Figure(
                "  answers that were 429",
                f"{share_429:.2%} ({answered_429} of {counters['total_requests']})",
                "< 1%",
                share_429 < 0.01 and summary["created"] == rate_rows,
            ),
        ]

        # Memory: peak RSS of dry runs, each in a fresh process.
        small, large = (int(value) for value in args.memory_rows.split(","))
        _log(f"memory: dry runs over {small:,} and {large:,} rows, each in a fresh process")
        small_kib = measure_memory(small, folder)
        large_kib = measure_memory(large, folder)
        ratio = large_kib / small_kib
        figures += [
            Figure(f"Memory: peak RSS, dry run over {small:,} rows", f"{small_kib / 1024:,.1f} MiB"),
            Figure(f"  peak RSS, dry run over {large:,} rows", f"{large_kib / 1024:,.1f} MiB"),
            Figure(f"  ratio {large:,} / {small:,}", f"{ratio:.3f}", "<= 1.2", ratio <= 1.2),
        ]

    header = (
        f"Bulk-load benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, mock CRM in its own process on loopback\n"
        f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.2f}"
    )
    print_table(figures, header)
    return 0 if all(figure.passed is not False for figure in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
