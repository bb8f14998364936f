"""A small, deterministic sample warehouse of opportunities, for the demo, the tests and the benchmark.

Two tables: ``crm_opportunities`` (rows for the v1 add-or-update API, keyed by
``opportunity_ref``) and ``nexus_opportunities`` (rows for the v2 put API, one per Nexus id and
type). The same rows go into a SQLite file, a PostgreSQL database, or SQL/CSV text for seeding
one: ``python -m airflow_opportunity_provider.sample_warehouse --help``.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

V1_TABLE = "crm_opportunities"
V2_TABLE = "nexus_opportunities"
DEFAULT_V1_ROWS = 300
# The mock CRM seeds v2 ids 1..100, each with a Pre and a Post record.
DEFAULT_V2_IDS = 100

V1_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (name, SQLite type, PostgreSQL type). Money is TEXT in SQLite: its NUMERIC affinity would
    # turn 1250.50 into a float; as text it comes back digit for digit, for Decimal().
    ("opportunity_ref", "TEXT NOT NULL PRIMARY KEY", "VARCHAR(20) NOT NULL PRIMARY KEY"),
    ("name", "TEXT NOT NULL", "VARCHAR(200) NOT NULL"),
    ("venue_id", "INTEGER NOT NULL", "INTEGER NOT NULL"),
    ("contact_id", "INTEGER", "INTEGER"),
    ("company_id", "INTEGER", "INTEGER"),
    ("company_lead_contact_id", "INTEGER", "INTEGER"),
    ("type_id", "INTEGER", "INTEGER"),
    ("stage_id", "INTEGER", "INTEGER"),
    ("source_id", "INTEGER", "INTEGER"),
    ("industry_id", "INTEGER", "INTEGER"),
    ("channel", "TEXT", "VARCHAR(20)"),
    ("closed_date", "TEXT", "DATE"),
    ("description", "TEXT", "TEXT"),
    ("estimated_value", "TEXT NOT NULL", "NUMERIC(14, 2) NOT NULL"),
    ("updated_at", "TEXT NOT NULL", "TIMESTAMP NOT NULL"),
)
V2_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("nexus_id", "INTEGER NOT NULL", "INTEGER NOT NULL"),
    ("opportunity_type", "TEXT NOT NULL", "VARCHAR(4) NOT NULL"),
    ("language_id", "INTEGER NOT NULL", "INTEGER NOT NULL"),
    ("opportunity_name", "TEXT NOT NULL", "VARCHAR(200) NOT NULL"),
    ("crm_opportunity_id", "TEXT NOT NULL", "VARCHAR(20) NOT NULL"),
    ("category_name", "TEXT NOT NULL", "VARCHAR(50) NOT NULL"),
    ("stage_name", "TEXT NOT NULL", "VARCHAR(50) NOT NULL"),
    ("acct_potential", "TEXT NOT NULL", "NUMERIC(14, 2) NOT NULL"),
    ("sales_revenue", "TEXT NOT NULL", "NUMERIC(14, 2) NOT NULL"),
    ("pending_close_date", "TEXT", "DATE"),
    ("updated_at", "TEXT NOT NULL", "TIMESTAMP NOT NULL"),
)
V2_PRIMARY_KEY = ("nexus_id", "opportunity_type")

# The query and mapping the example DAG uses for v1 (a plain dict: column names only).
V1_SQL = (
    f"SELECT {', '.join(name for name, _, _ in V1_COLUMNS if name != 'estimated_value')} "
    f"FROM {V1_TABLE} ORDER BY opportunity_ref"
)
V1_MAPPING = {
    "name": "name",
    "venueId": "venue_id",
    "contactId": "contact_id",
    "companyId": "company_id",
    "companyLeadContactId": "company_lead_contact_id",
    "typeId": "type_id",
    "stageId": "stage_id",
    "sourceId": "source_id",
    "industryId": "industry_id",
    "channelId": "channel",
    "closedDate": "closed_date",
    "description": "description",
}
V2_SQL = f"SELECT * FROM {V2_TABLE} ORDER BY nexus_id, opportunity_type"

_COMPANIES = (
    "Northwind Traders", "Contoso Pharmaceuticals", "Fabrikam Engineering", "Adventure Works Cycles",
    "Tailspin Toys", "Wide World Importers", "Litware Systems", "Proseware Legal", "Alpine Ski House",
    "Coho Winery", "Fourth Coffee", "Graphic Design Institute", "Lucerne Publishing", "Margie's Travel",
    "Trey Research", "Woodgrove Bank", "Blue Yonder Airlines", "City Power & Light", "Humongous Insurance",
    "Consolidated Messenger", "Southridge Video", "Relecloud", "VanArsdel Foods", "Bellows College",
)  # fmt: skip
_EVENTS = (
    "Annual Sales Kickoff", "Leadership Offsite", "Product Launch Dinner", "Partner Summit",
    "Board Retreat", "Customer Advisory Day", "Holiday Gala", "Training Week", "Investor Briefing",
    "Awards Night", "Regional Roadshow", "Graduation Reception", "Wedding Reception", "Charity Auction",
)  # fmt: skip
_CHANNELS = ("web", "phone", "email", "referral", "walk-in")
_VENUES = (107, 108, 112, 115)
_CATEGORIES = ("New Business", "Existing Business", "Renewal")
_STAGES = ("Prospect", "Qualified", "Proposal", "Closed Won", "Closed Lost")
_EPOCH = datetime(2026, 1, 5, 8, 0, 0)


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    """A whole number of cents between ``low`` and ``high`` dollars, as an exact Decimal."""
    return Decimal(rng.randrange(low * 100, high * 100)).scaleb(-2)


def v1_rows(count: int = DEFAULT_V1_ROWS, seed: int = 7) -> Iterator[dict[str, Any]]:
    """The ``crm_opportunities`` rows, the same ones every time for the same ``count`` and ``seed``.

    :param count: how many rows.
    :param seed: the random seed.
    """
    rng = random.Random(seed)
    for number in range(1, count + 1):
        company = rng.choice(_COMPANIES)
        event = rng.choice(_EVENTS)
        year = 2026 + rng.randrange(2)
        stage_id = rng.randrange(1, 6)
        # About a third of the leads belong to a company (with its lead contact), the rest to a contact.
        company_owned = rng.random() < 0.33
        contact = 5000 + rng.randrange(4000)
        closed = stage_id >= 4
        updated = _EPOCH + timedelta(minutes=rng.randrange(60 * 24 * 120))
        yield {
            "opportunity_ref": f"WH-{number:06d}",
            "name": f"{company} - {event} {year}",
            "venue_id": rng.choice(_VENUES),
            "contact_id": None if company_owned else contact,
            "company_id": 300 + _COMPANIES.index(company) if company_owned else None,
            "company_lead_contact_id": contact if company_owned else None,
            "type_id": rng.randrange(1, 5),
            "stage_id": stage_id,
            "source_id": rng.randrange(1, 7),
            "industry_id": rng.randrange(1, 12) if rng.random() < 0.7 else None,
            "channel": rng.choice(_CHANNELS),
            "closed_date": (updated.date() + timedelta(days=rng.randrange(30))) if closed else None,
            "description": f"{event} for about {rng.randrange(20, 400)} guests, {rng.randrange(1, 4)} day(s).",
            "estimated_value": _money(rng, 2_000, 250_000),
            "updated_at": updated,
        }


def v2_rows(ids: int = DEFAULT_V2_IDS, seed: int = 11) -> Iterator[dict[str, Any]]:
    """The ``nexus_opportunities`` rows: ids 1..``ids``, each with a Pre and a Post row.

    :param ids: how many Nexus ids.
    :param seed: the random seed.
    """
    rng = random.Random(seed)
    for nexus_id in range(1, ids + 1):
        company = rng.choice(_COMPANIES)
        for opportunity_type in ("Pre", "Post"):
            potential = _money(rng, 1_000, 500_000)
            updated = _EPOCH + timedelta(minutes=rng.randrange(60 * 24 * 120))
            yield {
                "nexus_id": nexus_id,
                "opportunity_type": opportunity_type,
                "language_id": 1,
                "opportunity_name": f"{company} - {rng.choice(_EVENTS)} ({opportunity_type.lower()}-visit)",
                "crm_opportunity_id": f"OPP-{nexus_id:06d}",
                "category_name": rng.choice(_CATEGORIES),
                "stage_name": rng.choice(_STAGES),
                "acct_potential": potential,
                # Revenue as a share of the potential, rounded to cents: exact decimals to check.
                "sales_revenue": (potential * Decimal(rng.randrange(5, 95)) / 100).quantize(Decimal("0.01")),
                "pending_close_date": updated.date() + timedelta(days=rng.randrange(10, 200)),
                "updated_at": updated,
            }


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _create_statement(
    table: str, columns: Sequence[tuple[str, str, str]], postgres: bool, extra: str = ""
) -> str:
    body = ", ".join(f"{name} {pg if postgres else lite}" for name, lite, pg in columns)
    return f"CREATE TABLE {table} ({body}{extra})"


def _tables(
    v1_count: int, v2_ids: int
) -> list[tuple[str, Sequence[tuple[str, str, str]], str, Iterable[dict[str, Any]]]]:
    v2_key = f", PRIMARY KEY ({', '.join(V2_PRIMARY_KEY)})"
    return [
        (V1_TABLE, V1_COLUMNS, "", v1_rows(v1_count)),
        (V2_TABLE, V2_COLUMNS, v2_key, v2_rows(v2_ids)),
    ]


def create_sqlite(
    path: str | Path, *, v1_count: int = DEFAULT_V1_ROWS, v2_ids: int = DEFAULT_V2_IDS, replace: bool = True
) -> Path:
    """Write the sample warehouse to a SQLite file (both tables, replaced by default).

    :param path: the SQLite file to create.
    :param v1_count: rows of ``crm_opportunities``.
    :param v2_ids: Nexus ids of ``nexus_opportunities`` (two rows each).
    :param replace: drop the tables first; otherwise leave an existing warehouse as it is.
    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(file))
    try:
        for table, columns, extra, rows in _tables(v1_count, v2_ids):
            exists = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            if exists and not replace:
                continue
            connection.execute(f"DROP TABLE IF EXISTS {table}")
            connection.execute(_create_statement(table, columns, False, extra))
            names = [name for name, _, _ in columns]
            insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            connection.executemany(insert, ([_sqlite_value(row[n]) for n in names] for row in rows))
        connection.commit()
    finally:
        connection.close()
    return file


def create_postgres(
    connection: Any,
    *,
    schema: str | None = None,
    v1_count: int = DEFAULT_V1_ROWS,
    v2_ids: int = DEFAULT_V2_IDS,
) -> None:
    """Write the sample warehouse to PostgreSQL through a DB-API connection (psycopg 2 or 3).

    :param connection: an open connection; committed at the end.
    :param schema: create the tables in this schema (created when missing).
    :param v1_count: rows of ``crm_opportunities``.
    :param v2_ids: Nexus ids of ``nexus_opportunities``.
    """
    cursor = connection.cursor()
    prefix = f"{schema}." if schema else ""
    if schema:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table, columns, extra, rows in _tables(v1_count, v2_ids):
        cursor.execute(f"DROP TABLE IF EXISTS {prefix}{table}")
        cursor.execute(_create_statement(prefix + table, columns, True, extra))
        names = [name for name, _, _ in columns]
        insert = f"INSERT INTO {prefix}{table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
        cursor.executemany(insert, [[row[n] for n in names] for row in rows])
    connection.commit()
    cursor.close()


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value:%Y-%m-%d %H:%M:%S}'"
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def postgres_sql(
    *, v1_count: int = DEFAULT_V1_ROWS, v2_ids: int = DEFAULT_V2_IDS, schema: str | None = None
) -> str:
    """The whole warehouse as PostgreSQL DDL and INSERTs, for ``psql`` or an init script.

    :param v1_count: rows of ``crm_opportunities``.
    :param v2_ids: Nexus ids of ``nexus_opportunities``.
    :param schema: put the tables in this schema.
    """
    prefix = f"{schema}." if schema else ""
    out = ["BEGIN;"]
    if schema:
        out.append(f"CREATE SCHEMA IF NOT EXISTS {schema};")
    for table, columns, extra, rows in _tables(v1_count, v2_ids):
        names = [name for name, _, _ in columns]
        out.append(f"DROP TABLE IF EXISTS {prefix}{table};")
        out.append(_create_statement(prefix + table, columns, True, extra) + ";")
        for row in rows:
            values = ", ".join(_sql_literal(row[n]) for n in names)
            out.append(f"INSERT INTO {prefix}{table} ({', '.join(names)}) VALUES ({values});")
    out.append("COMMIT;")
    return "\n".join(out) + "\n"


def csv_text(table: str = V1_TABLE, *, v1_count: int = DEFAULT_V1_ROWS, v2_ids: int = DEFAULT_V2_IDS) -> str:
    """One table as CSV with a header line (PostgreSQL's ``COPY ... WITH (FORMAT csv, HEADER)``).

    :param table: ``crm_opportunities`` or ``nexus_opportunities``.
    :param v1_count: rows of ``crm_opportunities``.
    :param v2_ids: Nexus ids of ``nexus_opportunities``.
    """
    for name, columns, _, rows in _tables(v1_count, v2_ids):
        if name == table:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            names = [column for column, _, _ in columns]
            writer.writerow(names)
            for row in rows:
                writer.writerow(["" if row[n] is None else _sqlite_value(row[n]) for n in names])
            return buffer.getvalue()
    raise ValueError(f"Unknown table {table!r}; choose {V1_TABLE} or {V2_TABLE}.")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a SQLite warehouse, or print PostgreSQL SQL or CSV for seeding one.

    :param argv: the arguments (``sys.argv[1:]`` when omitted).
    """
    parser = argparse.ArgumentParser(
        prog="python -m airflow_opportunity_provider.sample_warehouse",
        description="Create the sample opportunity warehouse.",
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_V1_ROWS, help="rows of crm_opportunities")
    parser.add_argument("--v2-ids", type=int, default=DEFAULT_V2_IDS, help="Nexus ids (two rows each)")
    commands = parser.add_subparsers(dest="command", required=True)
    sqlite_command = commands.add_parser("sqlite", help="write a SQLite file")
    sqlite_command.add_argument("path", help="the SQLite file")
    sql_command = commands.add_parser("postgres-sql", help="print PostgreSQL DDL and INSERTs")
    sql_command.add_argument("--schema", default=None, help="schema for the tables")
    csv_command = commands.add_parser("csv", help="print one table as CSV")
    csv_command.add_argument("table", choices=(V1_TABLE, V2_TABLE))
    args = parser.parse_args(argv)
    if args.command == "sqlite":
        path = create_sqlite(args.path, v1_count=args.rows, v2_ids=args.v2_ids)
        print(f"sample warehouse written to {path} ({args.rows} + {2 * args.v2_ids} rows)")
    elif args.command == "postgres-sql":
        sys.stdout.write(postgres_sql(v1_count=args.rows, v2_ids=args.v2_ids, schema=args.schema))
    else:
        sys.stdout.write(csv_text(args.table, v1_count=args.rows, v2_ids=args.v2_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
