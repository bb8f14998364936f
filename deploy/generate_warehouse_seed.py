"""Write the compose stack's warehouse seed from the sample-warehouse module, or check it is current.

python deploy/generate_warehouse_seed.py          # rewrite deploy/warehouse/10-sample-warehouse.sql
python deploy/generate_warehouse_seed.py --check  # exit 1 when the file differs from the module
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from airflow_opportunity_provider import sample_warehouse

SEED_FILE = Path(__file__).resolve().parent / "warehouse" / "10-sample-warehouse.sql"
HEADER = (
    "-- The sample warehouse of the compose stack, run by PostgreSQL's entrypoint on first start.\n"
    "-- Generated from airflow_opportunity_provider/sample_warehouse.py by\n"
    "-- deploy/generate_warehouse_seed.py: edit the module, then run that script.\n"
)


def seed_sql() -> str:
    """The seed file's full text: the header, then the module's PostgreSQL DDL and rows."""
    return HEADER + sample_warehouse.postgres_sql()


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the seed file, or with ``--check`` report whether it is current.

    :param argv: the options (``sys.argv[1:]`` when omitted).
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the seed file is out of date")
    args = parser.parse_args(argv)
    expected = seed_sql()
    if args.check:
        current = SEED_FILE.read_text() if SEED_FILE.exists() else ""
        if current != expected:
            print(
                f"{SEED_FILE} is out of date: run python deploy/generate_warehouse_seed.py", file=sys.stderr
            )
            return 1
        print(f"{SEED_FILE} is current")
        return 0
    SEED_FILE.write_text(expected)
    print(f"wrote {SEED_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
