"""``opportunity-sync``: the bulk load's sync states from a shell, through the operations the
Opportunity syncs page uses. Its exit codes are for scripts (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn, TextIO

from airflow_opportunity_provider.sync_state import operations
from airflow_opportunity_provider.sync_state.views import LOCAL_STATE_ID, ProblemRow, RunRow, SyncRow

OK = 0
USAGE = 1
NOT_FOUND = 2
UNREACHABLE = 3
NOTHING_DONE = 4
BUSY = 5

#: Every exit code and what it means, as ``--help`` prints them.
EXIT_CODES = {
    OK: "done",
    USAGE: "wrong usage: an unknown command or option, a missing argument",
    NOT_FOUND: "no such sync, partition or key in the state",
    UNREACHABLE: "the state could not be read or changed (a missing connection, a database down)",
    NOTHING_DONE: "nothing changed: forget without --yes, or a key that needs no change",
    BUSY: "a run of the sync holds its lease: try again when it has finished",
}

_EPILOG = """\
KEY is the row's key text as the operator stores it: a one-column key is its value
(opp-0042, 42); a key of several columns is a compact JSON list (["acme",42]).

examples:
  opportunity-sync list
  opportunity-sync show warehouse_to_crm.load_opportunities
  opportunity-sync rejects warehouse_to_crm.load_opportunities --code 24224 --csv > rejects.csv
  opportunity-sync unknown warehouse_to_crm.load_opportunities --state-conn-id sync_state_pg
  opportunity-sync resolve warehouse_to_crm.load_opportunities opp-0042 81234
  opportunity-sync resend warehouse_to_crm.load_opportunities opp-0007 opp-0008
  opportunity-sync forget scratch.sync            # prints how many rows would go, exits 4
  opportunity-sync forget scratch.sync --yes

exit codes:
""" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


class _Parser(argparse.ArgumentParser):
    """argparse, with wrong usage exiting :data:`USAGE` (argparse's own 2 is "not found" here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def _actor() -> str:
    """The operating-system user, whom every change is logged under."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment nor the password database
        return f"uid {os.getuid()}"


def _partition_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"a partition is a whole number from 0, not {text!r}")
    return number


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--state-conn-id",
        metavar="CONN_ID",
        default=None,
        help="the Airflow SQL connection of the state (default: the local SQLite state, "
        "$AIRFLOW_HOME/opportunity_sync/state.db)",
    )
    common.add_argument(
        "--partition",
        type=_partition_number,
        default=None,
        metavar="N",
        help="one partition of a partitioned sync (default: the whole sync)",
    )
    parser = _Parser(
        prog="opportunity-sync",
        description="Look at and fix the sync states of the Opportunity CRM bulk load "
        "(SqlToOpportunityOperator).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name != "list":
            sub.add_argument("sync", metavar="SYNC", help="the sync's name (the operator's sync_name)")
        return sub

    command("list", "every sync in the state, with its last run")
    command("show", "one sync: its rows per outcome, its last run, its open problems by code")
    runs = command("runs", "one sync's runs, newest first")
    runs.add_argument("--limit", type=int, default=operations.DEFAULT_RUNS, help="the most runs to show")
    for name, what in (
        ("rejects", "one sync's rejected or failed rows, newest first"),
        ("unknown", "one sync's creates whose outcome is unknown, newest first"),
    ):
        problems = command(name, what)
        problems.add_argument("--code", default=None, help="only the rows with this error code")
        problems.add_argument(
            "--csv", action="store_true", help="write CSV (key, outcome, code, time, message)"
        )
    resolve = command("resolve", "record the CRM id of a row whose create had an unknown outcome")
    resolve.add_argument("key", metavar="KEY", help="the row's key")
    resolve.add_argument("crm_id", metavar="CRM_ID", help="the id the CRM gave the record")
    resend = command("resend", "mark rows to be sent again by the next run (never an unknown create)")
    resend.add_argument("keys", metavar="KEY", nargs="+", help="the rows' keys")
    retry = command("retry-code", "mark every reject with one error code to be sent again")
    retry.add_argument("code", metavar="CODE", help="the error code, e.g. 24224")
    forget = command("forget", "delete a sync's state, rejects and runs (its next run creates every row)")
    forget.add_argument(
        "--yes", action="store_true", help="really delete; without it, say how many rows would go"
    )
    return parser


# -- output ----------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(name), *(len(row[index]) for row in rows)]) for index, name in enumerate(header)]
    for row in (header, *rows):
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _counts(run: RunRow | None) -> str:
    if run is None:
        return "—"
    return ", ".join(f"{name} {count}" for name, count in run.counts.items() if count) or "no rows"


def _sync_line(sync: SyncRow) -> list[str]:
    run = sync.last_run
    return [
        sync.sync_name,
        "" if sync.partition is None else str(sync.partition),
        str(sync.rows_in_state),
        str(sync.unresolved_unknowns),
        str(sync.open_rejects),
        _when(run.started_at if run else None),
        (run.verdict or "—") if run else "—",
        _counts(run),
    ]


_SYNC_HEADER = (
    "SYNC",
    "PARTITION",
    "ROWS",
    "UNKNOWN",
    "REJECTS",
    "LAST RUN (UTC)",
    "VERDICT",
    "LAST RUN COUNTS",
)


def _problems(out: TextIO, rows: Sequence[ProblemRow], as_csv: bool) -> None:
    if as_csv:
        writer = csv.writer(out)
        writer.writerow(["key", "outcome", "code", "time", "message"])
        for row in rows:
            writer.writerow(
                [
                    row.source_key,
                    row.outcome,
                    row.code or "",
                    row.at.isoformat() if row.at else "",
                    row.message or "",
                ]
            )
        return
    if not rows:
        out.write("none\n")
        return
    _table(
        out,
        ("KEY", "OUTCOME", "CODE", "TIME (UTC)", "MESSAGE"),
        [[row.source_key, row.outcome, row.code or "—", _when(row.at), row.message or ""] for row in rows],
    )


# -- the commands ----------------------------------------------------------------------------------


def _list(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    listing = operations.list_syncs([state_id])
    if listing.unreachable:
        raise operations.StateUnavailableError(
            f"could not read {listing.unreachable[0].location.description}: {listing.unreachable[0].reason}"
        )
    syncs = [sync for sync in listing.syncs if args.partition is None or sync.partition == args.partition]
    if not syncs:
        out.write(f"no sync in {operations.location_of(state_id).description}\n")
        return OK
    _table(out, _SYNC_HEADER, [_sync_line(sync) for sync in syncs])
    return OK


def _show(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    detail = operations.sync_detail(state_id, args.sync, args.partition, runs=1)
    sync = detail.sync
    run = sync.last_run
    lines = [
        ("sync", sync.sync_name + ("" if sync.partition is None else f" (partition {sync.partition})")),
        ("state", sync.location.description),
        ("rows in state", str(sync.rows_in_state)),
        ("unresolved unknowns", str(sync.unresolved_unknowns)),
        ("open rejects", str(sync.open_rejects)),
        (
            "last run",
            "none recorded" if run is None else f"{_when(run.started_at)} UTC, {run.verdict or '—'}",
        ),
        ("last run counts", _counts(run)),
        ("open problems by code", ", ".join(f"{c.code or '—'} {c.count}" for c in detail.codes) or "none"),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        out.write(f"{name.ljust(width)}  {value}\n")
    return OK


def _runs(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    detail = operations.sync_detail(state_id, args.sync, args.partition, runs=max(args.limit, 1), limit=0)
    if not detail.runs:
        out.write("no run recorded\n")
        return OK
    names = [name for name, _ in detail.runs[0].counts.items()]
    _table(
        out,
        (
            "STARTED (UTC)",
            "SECONDS",
            *(name.upper() for name in names),
            "REQUESTS",
            "RETRIES",
            "429S",
            "VERDICT",
            "RUN ID",
        ),
        [
            [
                _when(run.started_at),
                "—" if run.duration_seconds is None else f"{run.duration_seconds:.1f}",
                *(str(count) for _, count in run.counts.items()),
                _number(run.requests),
                _number(run.retries),
                _number(run.rate_limited),
                run.verdict or "—",
                run.run_id,
            ]
            for run in detail.runs
        ],
    )
    return OK


def _rejects(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    detail = operations.sync_detail(state_id, args.sync, args.partition, code=args.code, limit=None, runs=0)
    _problems(out, detail.rejects, args.csv)
    return OK


def _unknown(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    detail = operations.sync_detail(state_id, args.sync, args.partition, code=args.code, limit=None, runs=0)
    _problems(out, detail.unknowns, args.csv)
    return OK


def _resolve(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    changed = operations.resolve(state_id, args.sync, args.partition, args.key, args.crm_id, actor=_actor())
    if not changed:
        sys.stderr.write(f"{args.key!r} has no unknown outcome to resolve; nothing changed\n")
        return NOTHING_DONE
    out.write(f"recorded CRM id {args.crm_id} for {args.key}: the next run sends it as an update\n")
    return OK


def _resend(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    result = operations.resend(state_id, args.sync, args.partition, args.keys, actor=_actor(), strict=True)
    out.write(f"the next run sends {result.marked} rows again\n")
    if result.unresolved:
        sys.stderr.write(
            f"not marked, their create's outcome is unknown (resolve them): {', '.join(result.unresolved)}\n"
        )
    return OK if result.marked else NOTHING_DONE


def _retry_code(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    marked = operations.retry_code(state_id, args.sync, args.partition, args.code, actor=_actor())
    out.write(f"the next run sends the {marked} rejects with code {args.code} again\n")
    return OK if marked else NOTHING_DONE


def _forget(args: argparse.Namespace, state_id: str, out: TextIO) -> int:
    if args.partition is not None:
        raise operations.SyncNotFoundError(
            "a sync is forgotten with all of its partitions: leave --partition out"
        )
    if not args.yes:
        rows = operations.rows_in_state(state_id, args.sync)
        sys.stderr.write(
            f"forgetting {args.sync} would delete {rows} rows (and its rejects and runs); its next run "
            "creates every row again. Add --yes to do it.\n"
        )
        return NOTHING_DONE
    deleted = operations.forget(state_id, args.sync, None, actor=_actor())
    out.write(f"forgot {args.sync}: {deleted} rows deleted\n")
    return OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, str, TextIO], int]] = {
    "list": _list,
    "show": _show,
    "runs": _runs,
    "rejects": _rejects,
    "unknown": _unknown,
    "resolve": _resolve,
    "resend": _resend,
    "retry-code": _retry_code,
    "forget": _forget,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (see :data:`EXIT_CODES`).

    :param argv: the arguments after the program's name; ``sys.argv[1:]`` by default.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    state_id = args.state_conn_id or LOCAL_STATE_ID
    try:
        return _COMMANDS[args.command](args, state_id, sys.stdout)
    except (operations.SyncNotFoundError, operations.KeyNotFoundError) as error:
        code, message = NOT_FOUND, str(error)
    except operations.StateUnavailableError as error:
        code, message = UNREACHABLE, str(error)
    except operations.SyncBusyError as error:
        code, message = BUSY, str(error)
    except operations.ChangedSinceConfirmedError as error:
        code, message = NOTHING_DONE, str(error)
    sys.stderr.write(f"opportunity-sync: {message}\n")
    return code


def run(argv: Any = None) -> NoReturn:
    """The console script: log each change with the user's name on stderr, and exit with the code.

    :param argv: the arguments after the program's name; ``sys.argv[1:]`` by default.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # Failures are printed once, as the command's error; the log keeps only who changed what.
    handler.addFilter(lambda record: record.levelno < logging.WARNING)
    logger = logging.getLogger(operations.__name__)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Airflow's own logging set-up must not print each change a second time.
    logger.propagate = False
    sys.exit(main(argv))
