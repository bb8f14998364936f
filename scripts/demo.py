"""The main job, end to end on this machine: the mock CRM server, then the example DAGs against it.

``make demo`` runs it. It starts the mock CRM on a free loopback port, points the
``opportunity_default`` connection at it, runs ``opportunity_example`` and prints what the CRM
now holds, then loads the sample warehouse with ``warehouse_to_crm`` twice (the second run
sends nothing) and prints each run's summary, then stops the server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.mock_crm.testing import connection_dict

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUTPUT = REPO / "demo-output"
# Lines of our own operators' logs that say what happened, picked out of `airflow dags test`.
_OPERATOR_LINE = re.compile(
    r"(Created v1 opportunity \d+|Updated v1 opportunity \d+|Updated v2 \w+ opportunity \d+)"
)


# The bulk operator's summary, as it logs it: a line of counts, then a line of requests and rate.
_SUMMARY_COUNTS = re.compile(
    r"(Sync '[^']+'(?: \(partition[^)]*\))?, target v\d: .*?failed \d+(?:, \w+ \d+)*\.)"
)
_SUMMARY_RATE = re.compile(r"^(\d+ requests sent .*? rows/s\.)", re.MULTILINE)


def start_mock() -> tuple[subprocess.Popen[str], str]:
    """Start the mock CRM server as its own process and return it with its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_opportunity_provider.mock_crm", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    match = re.search(r"http://\S+", line)
    if not match:
        process.kill()
        raise SystemExit(f"the mock CRM server did not start: {line!r}")
    return process, match.group(0)


def fetch(base_url: str, path: str) -> Any:
    """Read one of the mock's inspection endpoints."""
    with urllib.request.urlopen(base_url + path, timeout=10) as answer:
        return json.load(answer)


def set_faults(base_url: str, faults: dict[str, Any]) -> None:
    """Switch the mock's fault injection (``FaultConfig`` fields; ``{}`` turns every fault off)."""
    request = urllib.request.Request(
        base_url + "/_mock/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def run_dag(dag_id: str, env: dict[str, str]) -> str:
    """Run a DAG with ``airflow dags test``; its full output goes to ``demo-output/<dag_id>.log``."""
    OUTPUT.mkdir(exist_ok=True)
    env = {**env, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log = result.stdout + result.stderr
    (OUTPUT / f"{dag_id}.log").write_text(log)
    if result.returncode != 0 or "state=failed" in log or "DagRunState.FAILED" in log:
        print(log[-4000:])
        raise SystemExit(f"`airflow dags test {dag_id}` failed; full output in demo-output/{dag_id}.log")
    return log


def main() -> None:
    """Run the demo."""
    mock, base_url = start_mock()
    try:
        env = dict(os.environ)
        env["AIRFLOW_CONN_OPPORTUNITY_DEFAULT"] = json.dumps(connection_dict(base_url))
        print(f"Mock CRM server listening on {base_url}\n")

        print("== opportunity_example: v1 create, v1 update by the returned id, v2 put ==")
        log = run_dag("opportunity_example", env)
        for line in dict.fromkeys(_OPERATOR_LINE.findall(log)):
            print(f"  {line}")
        stored = fetch(base_url, "/_mock/opportunities")
        for record in stored["v1"]:
            print(f"  CRM now holds v1 opportunity {record['id']}: name={record.get('name')!r}")
        changed = [r for r in stored["v2"] if str(r.get("OpportunityID") or "").startswith("V1-")]
        for record in changed:
            print(
                f"  CRM now holds v2 {record['Type']} opportunity {record['ID']}: "
                f"OpportunityID={record['OpportunityID']!r} stage id={record.get('OpportunityStageID')} "
                f"revenue={record.get('SalesRevenue')}"
            )

        # The sample warehouse and a sync state of the demo's own, made anew on every run so that
        # the demo always starts from an empty CRM and an empty state.
        OUTPUT.mkdir(exist_ok=True)
        for stale in OUTPUT.glob("*.db*"):
            stale.unlink()
        warehouse = sample_warehouse.create_sqlite(OUTPUT / "warehouse.db")
        env["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
        env["AIRFLOW_CONN_DEMO_SYNC_STATE"] = json.dumps(
            {"conn_type": "sqlite", "host": str(OUTPUT / "sync-state.db")}
        )
        env["AIRFLOW_VAR_OPPORTUNITY_STATE_CONN_ID"] = "demo_sync_state"
        runs = (
            # The answers to 5% of the writes are lost after the CRM stored them (and 10% are
            # refused with 503): each lost create is found again by its reference, so the run
            # ends with every row created once and nothing unknown.
            (
                "first run, 5% of answers dropped, 10% 503",
                {"drop_after_commit_rate": 0.05, "errors": {"503": 0.1}, "retry_after": 0.05, "seed": 3},
            ),
            ("second run, nothing changed", {}),
        )
        for attempt, faults in runs:
            set_faults(base_url, faults)
            before = fetch(base_url, "/_mock/counters")["total_requests"]
            dropped = fetch(base_url, "/_mock/counters").get("dropped_after_commit", 0)
            print(f"\n== warehouse_to_crm ({attempt}): sample warehouse -> CRM ==")
            log = run_dag("warehouse_to_crm", env)
            for counts, rate in zip(_SUMMARY_COUNTS.findall(log), _SUMMARY_RATE.findall(log), strict=False):
                print(f"  {counts}\n    {rate}")
            counters = fetch(base_url, "/_mock/counters")
            sent = counters["total_requests"] - before
            lost = counters.get("dropped_after_commit", 0) - dropped
            print(
                f"  The CRM received {sent} requests in this run; {lost} answers were dropped after it stored the write."
            )
        stored = fetch(base_url, "/_mock/opportunities")
        references = fetch(base_url, "/_mock/references")
        held = {ref: ids for ref, ids in references.items() if ref.startswith("airflow-sync:")}
        twice = [ref for ref, ids in held.items() if len(ids) > 1]
        print(
            f"\n  CRM now holds {len(stored['v1'])} v1 opportunities; {len(held)} sync references, "
            f"{len(twice)} of them on more than one record."
        )
        print(f"\nFull logs in {OUTPUT.relative_to(REPO)}/")
    finally:
        mock.terminate()
        mock.wait(timeout=10)


if __name__ == "__main__":
    main()
