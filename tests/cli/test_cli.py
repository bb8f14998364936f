"""``opportunity-sync``: every command, its errors and its exit codes, over sample states written
through ``SyncState``. Most cases call ``main(argv)`` in this process; a few run the real entry points.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_opportunity_provider.sync_state import cli
from airflow_opportunity_provider.transfers.keys import key_digest
from airflow_opportunity_provider.transfers.state import RunRecord, StateWrite, SyncState, utc_now
from tests.ui import sample_states as sample

CONN = "cli_test_state"
MAIN = sample.MAIN_SYNC
SPLIT_SYNC = "cli.partitioned"


@pytest.fixture
def states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The sample local state under this test's AIRFLOW_HOME, and a connection's state file."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    local = tmp_path / "home" / "opportunity_sync" / "state.db"
    sample.write_local_state(local)
    connection = tmp_path / "connection-state.db"
    sample.write_connection_state(connection)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "sqlite", "host": str(connection)})
    )
    return {"local": local, "connection": connection, "home": tmp_path / "home"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path: Path, sync_name: str) -> dict[str, tuple[str | None, str | None, str]]:
    with sqlite3.connect(path) as connection:
        found = connection.execute(
            "SELECT source_key, crm_id, payload_hash, outcome FROM opportunity_sync_state WHERE sync_name = ?",
            [sync_name],
        ).fetchall()
    return {key: (crm_id, payload_hash, outcome) for key, crm_id, payload_hash, outcome in found}


def _lines(out: str) -> dict[str, str]:
    """Table lines by their first column."""
    return {line.split("  ")[0]: line for line in out.splitlines()}


# -- reading -----------------------------------------------------------------------------------


def test_list_shows_every_sync_with_its_counts_and_last_run(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "list")

    assert (code, err) == (0, "")
    lines = _lines(out)
    assert lines["SYNC"].split()[:5] == ["SYNC", "PARTITION", "ROWS", "UNKNOWN", "REJECTS"]
    assert lines[MAIN].split()[1:4] == ["16", "1", "3"]
    assert "failed" in lines[MAIN]
    assert lines[MAIN].endswith("updated 3, rejected 1, unknown 1")
    assert set(lines) >= {sample.HOSTILE_SYNC, sample.RESOLVE_SYNC, sample.FORGET_SYNC}


def test_list_of_a_connections_state_and_of_an_empty_one(
    states: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, _ = _run(capsys, "list", "--state-conn-id", CONN)
    assert code == 0
    assert set(_lines(out)) == {"SYNC", sample.NEXUS_SYNC, sample.API_SYNC}

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "empty-home"))
    code, out, _ = _run(capsys, "list")
    assert code == 0
    assert out.startswith("no sync in the local state file")
    assert not (tmp_path / "empty-home").exists()  # looking creates nothing


def test_show_names_the_syncs_figures_and_its_problems_by_code(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "show", MAIN)

    assert code == 0
    fields = {line[:22].strip(): line[22:].strip() for line in out.splitlines()}
    assert fields["rows in state"] == "16"
    assert fields["unresolved unknowns"] == "1"
    assert fields["open rejects"] == "3"
    assert fields["last run counts"] == "updated 3, rejected 1, unknown 1"
    assert fields["open problems by code"] == "24224 2, outcome_unknown 1, schema 1"


def test_runs_come_from_the_runs_table_newest_first(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "runs", MAIN)

    assert code == 0
    header, newest, oldest = (re.split(r"\s{2,}", line) for line in out.splitlines())
    assert header[:2] == ["STARTED (UTC)", "SECONDS"]
    values = dict(zip(header, newest, strict=True))
    assert (values["UPDATED"], values["REJECTED"], values["UNKNOWN"]) == ("3", "1", "1")
    assert (values["REQUESTS"], values["RETRIES"], values["429S"], values["VERDICT"]) == (
        "5",
        "2",
        "1",
        "failed",
    )
    assert dict(zip(header, oldest, strict=True))["CREATED"] == "12"

    code, out, _ = _run(capsys, "runs", MAIN, "--limit", "1")
    assert len(out.splitlines()) == 2


def test_rejects_filter_by_code_and_write_csv(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "rejects", MAIN)
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"opp-0012", "opp-0013", "opp-0015"}

    code, out, _ = _run(capsys, "rejects", MAIN, "--code", "24224", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(row["key"] for row in rows) == ["opp-0012", "opp-0013"]
    assert {(row["outcome"], row["code"], row["message"]) for row in rows} == {
        ("rejected", "24224", "Contact 918 does not belong to venue 107")
    }
    assert all(row["time"].startswith("20") for row in rows)

    # A message with quotes and markup survives CSV as it was.
    code, out, _ = _run(capsys, "rejects", MAIN, "--code", "schema", "--csv")
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["message"] == sample.HOSTILE_MESSAGE

    code, out, _ = _run(capsys, "rejects", MAIN, "--code", "no-such-code")
    assert (code, out) == (0, "none\n")


def test_unknown_lists_the_unresolved_creates(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "unknown", MAIN)

    assert code == 0
    (line,) = out.splitlines()[1:]
    assert line.split()[:3] == ["opp-0014", "unknown", "outcome_unknown"]


# -- changing ----------------------------------------------------------------------------------


def test_resolve_records_the_id_logs_the_user_and_a_second_time_changes_nothing(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="airflow_opportunity_provider.sync_state.operations"):
        code, out, _ = _run(capsys, "resolve", MAIN, "opp-0014", "7777")

    assert code == cli.OK
    assert "recorded CRM id 7777 for opp-0014" in out
    assert _rows(states["local"], MAIN)["opp-0014"] == ("7777", None, "created")
    (record,) = [r for r in caplog.records if "resolved" in r.getMessage()]
    assert cli._actor() in record.getMessage()

    code, _, err = _run(capsys, "resolve", MAIN, "opp-0014", "8888")
    assert code == cli.NOTHING_DONE
    assert "no unknown outcome" in err
    assert _rows(states["local"], MAIN)["opp-0014"][0] == "7777"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["resolve", MAIN, "opp-9999", "1"], "no row of the key 'opp-9999'"),
        (["resolve", "no.such.sync", "opp-0014", "1"], "no sync 'no.such.sync'"),
        (["resend", MAIN, "opp-0004", "opp-9999"], "no row of the key 'opp-9999'"),
        (["show", "no.such.sync"], "no sync 'no.such.sync'"),
        (["runs", "x' OR '1'='1"], "no sync"),
        (["show", MAIN, "--partition", "1"], "no partition 1"),
        (["forget", MAIN, "--yes", "--partition", "0"], "all of its partitions"),
    ],
)
def test_an_unknown_sync_key_or_partition_exits_2_and_changes_nothing(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    before = _rows(states["local"], MAIN)

    code, out, err = _run(capsys, *argv)

    assert code == cli.NOT_FOUND
    assert out == ""
    assert err.startswith("opportunity-sync: ")
    assert words in err
    assert _rows(states["local"], MAIN) == before


def test_resend_marks_known_rows_and_never_an_unknown_create(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "resend", MAIN, "opp-0004", "opp-0012", "opp-0014")

    assert code == cli.OK
    assert "sends 2 rows again" in out
    assert "opp-0014" in err
    rows = _rows(states["local"], MAIN)
    assert (rows["opp-0004"][1], rows["opp-0012"][1]) == (None, None)
    assert rows["opp-0014"][1] == "h-opp-0014"

    code, _, _ = _run(capsys, "resend", MAIN, "opp-0014")
    assert code == cli.NOTHING_DONE


def test_retry_code_marks_every_reject_of_the_code(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "retry-code", sample.API_SYNC, "24221", "--state-conn-id", CONN)
    assert code == cli.OK
    assert "the 2 rejects with code 24221" in out
    rows = _rows(states["connection"], sample.API_SYNC)
    assert (rows["a-3"][1], rows["a-4"][1], rows["a-5"][1]) == (None, None, "h-a-5")

    code, _, _ = _run(capsys, "retry-code", sample.API_SYNC, "no-such-code", "--state-conn-id", CONN)
    assert code == cli.NOTHING_DONE


def test_forget_without_yes_says_how_many_rows_would_go_and_exits_4(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "forget", sample.FORGET_SYNC)

    assert code == cli.NOTHING_DONE
    assert out == ""
    assert "would delete 7 rows" in err
    assert "--yes" in err
    assert len(_rows(states["local"], sample.FORGET_SYNC)) == 7

    code, out, _ = _run(capsys, "forget", sample.FORGET_SYNC, "--yes")
    assert code == cli.OK
    assert "7 rows deleted" in out
    assert _rows(states["local"], sample.FORGET_SYNC) == {}
    assert len(_rows(states["local"], MAIN)) == 16
    code, _, _ = _run(capsys, "show", sample.FORGET_SYNC)
    assert code == cli.NOT_FOUND


def test_forget_while_a_run_holds_the_lease_exits_5(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    running = SyncState.local(states["local"], sync_name=sample.FORGET_SYNC, run_id="running-now")
    running.open()
    try:
        running.acquire_lease(300)
        code, _, err = _run(capsys, "forget", sample.FORGET_SYNC, "--yes")
    finally:
        running.close()

    assert code == cli.BUSY
    assert "running-now" in err
    assert len(_rows(states["local"], sample.FORGET_SYNC)) == 7


# -- partitions, the state, usage -------------------------------------------------------------


def test_a_partitioned_sync_is_listed_and_shown_per_partition(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [f"p-{number}" for number in range(10)]
    for index in range(2):
        state = SyncState.local(
            states["local"],
            sync_name=SPLIT_SYNC,
            run_id=f"split-{index}",
            partition_index=index,
            partition_count=2,
        )
        state.open()
        try:
            mine = [key for key in keys if _partition(key) == index]
            state.apply([StateWrite(key, key_digest(key), "created", crm_id="1") for key in mine])  # type: ignore[arg-type]
            state.record_run(
                RunRecord(f"split-{index}", started_at=utc_now(), created=len(mine), verdict="passed")
            )
        finally:
            state.close()

    code, out, _ = _run(capsys, "list", "--partition", "1")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith(SPLIT_SYNC)]
    in_partition_1 = sum(1 for key in keys if _partition(key) == 1)
    assert line.split()[1:3] == ["1", str(in_partition_1)]
    assert line.endswith(f"created {in_partition_1}")

    code, out, _ = _run(capsys, "runs", SPLIT_SYNC, "--partition", "1")
    assert code == 0
    assert len(out.splitlines()) == 2
    assert "split-1" in out


def _partition(key: str) -> int:
    from airflow_opportunity_provider.transfers.keys import partition_of

    return partition_of(key, 2)


def test_a_state_that_cannot_be_read_exits_3_without_driver_text(
    states: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = _run(capsys, "list", "--state-conn-id", "no_such_connection")
    assert code == cli.UNREACHABLE
    assert "no_such_connection" in err

    bad = tmp_path / "not-a-database.db"
    bad.write_bytes(b"secret-looking text that is not SQLite" * 100)
    monkeypatch.setenv("AIRFLOW_CONN_CLI_BAD_STATE", json.dumps({"conn_type": "sqlite", "host": str(bad)}))
    for argv in (["show", MAIN], ["forget", MAIN, "--yes"], ["list"]):
        code, _, err = _run(capsys, *argv, "--state-conn-id", "cli_bad_state")
        assert code == cli.UNREACHABLE, argv
        assert "DatabaseError" in err
        assert "secret" not in err


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["show"], ["resend", MAIN], ["show", MAIN, "--partition", "-1"], ["list", "--nope"]],
)
def test_wrong_usage_exits_1(
    states: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, err = _run(capsys, *argv)

    assert code == cli.USAGE
    assert "usage: opportunity-sync" in err


def test_help_has_examples_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")

    assert code == 0
    for command in ("list", "show", "runs", "rejects", "unknown", "resolve", "resend", "forget"):
        assert command in out
    assert "opportunity-sync resolve warehouse_to_crm.load_opportunities opp-0042 81234" in out
    for number, meaning in cli.EXIT_CODES.items():
        assert f"  {number}  {meaning}" in out

    code, out, _ = _run(capsys, "rejects", "--help")
    assert code == 0
    assert "--state-conn-id" in out
    assert "--csv" in out


# -- the real entry points ---------------------------------------------------------------------


def _environment(states: dict[str, Path]) -> dict[str, str]:
    return {**os.environ, "AIRFLOW_HOME": str(states["home"])}


def test_python_dash_m_lists_the_syncs(states: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_opportunity_provider.sync_state", "list"],
        capture_output=True,
        text=True,
        env=_environment(states),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert MAIN in done.stdout


def test_the_console_script_logs_a_change_with_the_user_and_exits_with_the_code(
    states: dict[str, Path],
) -> None:
    script = Path(sys.executable).with_name("opportunity-sync")
    done = subprocess.run(
        [str(script), "resolve", sample.RESOLVE_SYNC, "r-1", "5555"],
        capture_output=True,
        text=True,
        env=_environment(states),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{cli._actor()} resolved key 'r-1'" in done.stderr
    assert _rows(states["local"], sample.RESOLVE_SYNC)["r-1"][:1] == ("5555",)

    done = subprocess.run(
        [str(script), "show", "no.such.sync"],
        capture_output=True,
        text=True,
        env=_environment(states),
        timeout=60,
        check=False,
    )
    assert done.returncode == cli.NOT_FOUND
    assert done.stderr == (
        "opportunity-sync: no sync 'no.such.sync' in the local state file $AIRFLOW_HOME/opportunity_sync/state.db\n"
    )
