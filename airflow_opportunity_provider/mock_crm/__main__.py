"""Command line of the mock CRM server: ``python -m airflow_opportunity_provider.mock_crm --port 8080``.

It prints ``mock CRM listening on http://HOST:PORT`` once it accepts requests, so scripts can
wait for that line, and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from airflow_opportunity_provider.mock_crm import config as defaults
from airflow_opportunity_provider.mock_crm.config import MockCrmConfig
from airflow_opportunity_provider.mock_crm.faults import FaultConfig
from airflow_opportunity_provider.mock_crm.server import MockCrmServer

READY_LINE = "mock CRM listening on {base_url}"


def parse_error_share(text: str) -> tuple[int, float]:
    """Parse one ``--error STATUS=SHARE`` value, e.g. ``503=0.1``.

    :param text: the option's value.
    """
    status, separator, share = text.partition("=")
    try:
        if not separator:
            raise ValueError(text)
        return int(status), float(share)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STATUS=SHARE such as 503=0.1, got {text!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: ...)`` to every option's help unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "(default:" in help_text or action.default is argparse.SUPPRESS:
            return help_text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option's help says its default."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_opportunity_provider.mock_crm",
        description="Mock CRM server for the v1 (signed) and v2 (OAuth2) opportunity APIs.",
        formatter_class=_HelpFormatter,
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8080, help="port to listen on (0 picks a free one)")
    server.add_argument("--access-log", action="store_true", help="log one line per request to stderr")
    server.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop; auto uses uvloop when it is installed",
    )
    credentials = parser.add_argument_group("credentials")
    credentials.add_argument("--api-key", default=defaults.DEFAULT_API_KEY, help="v1 API key")
    credentials.add_argument("--api-secret", default=defaults.DEFAULT_API_SECRET, help="v1 API secret")
    credentials.add_argument("--client-id", default=defaults.DEFAULT_CLIENT_ID, help="v2 OAuth2 client id")
    credentials.add_argument(
        "--client-secret", default=defaults.DEFAULT_CLIENT_SECRET, help="v2 OAuth2 client secret"
    )
    credentials.add_argument(
        "--static-token",
        default=defaults.DEFAULT_STATIC_TOKEN,
        help='pre-issued v2 bearer token that never expires ("" for none)',
    )
    credentials.add_argument(
        "--token-ttl",
        type=float,
        default=defaults.DEFAULT_TOKEN_TTL,
        help="expires_in of issued tokens, seconds",
    )
    credentials.add_argument(
        "--max-clock-skew",
        type=float,
        default=defaults.DEFAULT_MAX_CLOCK_SKEW,
        help="seconds a v1 request date may be off before it is refused as stale (23005)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--category",
        action="append",
        default=None,
        help=f"v2 category name, repeatable (default: {', '.join(defaults.DEFAULT_CATEGORIES)})",
    )
    data.add_argument(
        "--stage",
        action="append",
        default=None,
        help=f"v2 stage name, repeatable (default: {', '.join(defaults.DEFAULT_STAGES)})",
    )
    data.add_argument(
        "--v2-seed-count",
        type=int,
        default=defaults.DEFAULT_V2_SEED_COUNT,
        help="v2 opportunities 1..N exist, each with a Pre and a Post record",
    )
    data.add_argument(
        "--first-v1-id", type=int, default=defaults.DEFAULT_FIRST_V1_ID, help="id of the first v1 create"
    )
    data.add_argument(
        "--list-page-cap",
        type=int,
        default=defaults.DEFAULT_LIST_PAGE_CAP,
        help="most records one v1 getOpportunityList page holds, and its size when perPage is left out",
    )
    faults = parser.add_argument_group("faults (all off by default)")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to every API answer")
    faults.add_argument(
        "--error",
        action="append",
        type=parse_error_share,
        default=None,
        metavar="STATUS=SHARE",
        help="answer this share of API requests with STATUS instead (e.g. 503=0.1), repeatable "
        "(default: none)",
    )
    faults.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds sent on injected 429 and 503"
    )
    faults.add_argument(
        "--drop-after-commit-rate",
        type=float,
        default=0.0,
        help="share of successful writes stored and then answered by closing the connection",
    )
    faults.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="API requests/s before 429 (token bucket) (default: unlimited)",
    )
    faults.add_argument(
        "--burst", type=int, default=None, help="rate limit bucket size (default: the rate, at least 1)"
    )
    faults.add_argument(
        "--reject-name",
        action="append",
        default=None,
        help="opportunity name refused as invalid (v1 24224, v2 400), repeatable (default: none)",
    )
    faults.add_argument(
        "--faults-on-token-endpoint",
        action="store_true",
        help="apply latency, errors and the rate limit to the OAuth2 token endpoint too",
    )
    faults.add_argument(
        "--list-ignores-filters",
        action="store_true",
        help="the v1 opportunity list ignores 'filter' (venueIds and paging still apply)",
    )
    faults.add_argument(
        "--list-ignores-venue-ids", action="store_true", help="the v1 opportunity list ignores 'venueIds'"
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of the random fault draws")
    return parser


def config_from_args(args: argparse.Namespace) -> MockCrmConfig:
    """Turn parsed options into a :class:`MockCrmConfig`.

    :param args: what :func:`build_parser` parsed.
    """
    faults = FaultConfig(
        latency=args.latency,
        errors=dict(args.error or []),
        retry_after=args.retry_after,
        drop_after_commit_rate=args.drop_after_commit_rate,
        rate_limit=args.rate_limit,
        burst=args.burst,
        reject_names=frozenset(args.reject_name or ()),
        faults_on_token_endpoint=args.faults_on_token_endpoint,
        list_ignores_filters=args.list_ignores_filters,
        list_ignores_venue_ids=args.list_ignores_venue_ids,
        seed=args.seed,
    )
    return MockCrmConfig(
        api_key=args.api_key,
        api_secret=args.api_secret,
        client_id=args.client_id,
        client_secret=args.client_secret,
        static_token=args.static_token or None,
        token_ttl=args.token_ttl,
        categories=tuple(args.category or defaults.DEFAULT_CATEGORIES),
        stages=tuple(args.stage or defaults.DEFAULT_STAGES),
        v2_seed_ids=range(1, args.v2_seed_count + 1),
        first_v1_id=args.first_v1_id,
        max_clock_skew=args.max_clock_skew,
        list_page_cap=args.list_page_cap,
        faults=faults,
    )


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


async def _serve(server: MockCrmServer, host: str, port: int, access_log: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def announce(base_url: str) -> None:
        print(READY_LINE.format(base_url=base_url), flush=True)

    await server.serve(host, port, stop, access_log=access_log, on_ready=announce)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock server until SIGTERM or SIGINT; return the exit status.

    :param argv: the options (``sys.argv[1:]`` when omitted).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.access_log:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    server = MockCrmServer(config)
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        runner.run(_serve(server, args.host, args.port, args.access_log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
