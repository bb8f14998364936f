"""The sample warehouse: the same realistic rows every time, exact decimals, and seeding text for PostgreSQL."""

from __future__ import annotations

import csv
import io
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_opportunity_provider import sample_warehouse
from airflow_opportunity_provider.schemas import validate_add_or_update_payload


def test_rows_are_deterministic_and_valid_creates() -> None:
    first, again = list(sample_warehouse.v1_rows(300)), list(sample_warehouse.v1_rows(300))
    assert first == again
    assert len({row["opportunity_ref"] for row in first}) == 300
    for row in first:
        payload = {
            field: row[column]
            for field, column in sample_warehouse.V1_MAPPING.items()
            if row[column] is not None
        }
        validate_add_or_update_payload(payload)
    v2 = list(sample_warehouse.v2_rows())
    assert len(v2) == 200
    assert {row["opportunity_type"] for row in v2} == {"Pre", "Post"}


def test_sqlite_gives_the_decimals_back_digit_for_digit(tmp_path: Path) -> None:
    path = sample_warehouse.create_sqlite(tmp_path / "w.db", v1_count=20, v2_ids=5)
    with sqlite3.connect(path) as connection:
        stored = {
            (nexus_id, kind): (potential, revenue)
            for nexus_id, kind, potential, revenue in connection.execute(
                "SELECT nexus_id, opportunity_type, acct_potential, sales_revenue FROM nexus_opportunities"
            )
        }
        assert connection.execute("SELECT COUNT(*) FROM crm_opportunities").fetchone() == (20,)
    expected = {(row["nexus_id"], row["opportunity_type"]): row for row in sample_warehouse.v2_rows(5)}
    assert set(stored) == set(expected)
    for key, (potential, revenue) in stored.items():
        assert Decimal(potential) == expected[key]["acct_potential"]
        assert revenue == str(expected[key]["sales_revenue"])  # the very digits, "1250.50" not "1250.5"
    # replace=False leaves an existing warehouse alone.
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM crm_opportunities")
    sample_warehouse.create_sqlite(path, v1_count=20, replace=False)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM crm_opportunities").fetchone() == (0,)


def test_postgres_sql_and_csv_for_seeding(capsys: pytest.CaptureFixture[str]) -> None:
    sql = sample_warehouse.postgres_sql(v1_count=3, v2_ids=1, schema="warehouse")
    assert "CREATE TABLE warehouse.crm_opportunities (opportunity_ref VARCHAR(20) NOT NULL PRIMARY KEY" in sql
    assert "estimated_value NUMERIC(14, 2) NOT NULL" in sql
    assert sql.count("INSERT INTO warehouse.crm_opportunities") == 3
    assert sql.strip().endswith("COMMIT;")
    rows = list(csv.DictReader(io.StringIO(sample_warehouse.csv_text("nexus_opportunities", v2_ids=2))))
    assert len(rows) == 4
    assert rows[0]["acct_potential"] == str(next(sample_warehouse.v2_rows(2))["acct_potential"])
    assert sample_warehouse.main(["--rows", "2", "postgres-sql"]) == 0
    assert "INSERT INTO crm_opportunities" in capsys.readouterr().out
