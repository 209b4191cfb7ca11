"""The ``obsml`` command line: ``obsml <command> [options]``.

Each command is a function ``(args) -> int`` registered by a ``_add_<command>`` helper; its
work lives in a module of its own (``obsml demo`` in :mod:`obsml._demo`, ``obsml query`` in
:mod:`obsml._cli_query`), imported only when the command runs, so that ``obsml --help`` stays quick.
A command that reads the store adds ``--store``, ``--since`` and ``--until`` with
:func:`add_store_options` and gets them back, parsed, as ``args.store``, ``args.since`` and
``args.until``. This is the only module that ends the process, and only from ``__main__``; the
``obsml`` console script calls :func:`main` and exits with what it returns.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from .__version__ import __version__

if TYPE_CHECKING:
    from ._logs import Filters

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obsml",
        description="Observability for ML model servers: every scoring request captured as a span.",
    )
    parser.add_argument("--version", action="version", version=f"obsml {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    _add_demo(commands)
    _add_query(commands)
    _add_status(commands)
    _add_logs(commands)
    _add_tail(commands)
    _add_run(commands)
    _add_report(commands)
    _add_drift(commands)
    _add_retention(commands)
    _add_compact(commands)
    _add_export(commands)
    _add_config(commands)
    return parser


def add_store_options(parser: argparse.ArgumentParser, *, since: str | None = None, window: bool = True) -> None:
    """``--store`` (default ``OBSML_STORE``, else ./obsml-data) and the window ``--since``/``--until``
    (not with ``window=False``: ``obsml tail`` has none).

    ``since`` is the default of ``--since`` (a duration such as ``"1h"``; None: from the start).
    The command gets ``args.store`` (a URL or path) and ``args.since``/``args.until`` (aware UTC
    datetimes, or None); a bad time is a usage error.
    """
    parser.add_argument(
        "--store", default=os.environ.get("OBSML_STORE") or DEFAULT_STORE, metavar="URL",
        help="the store: a local path, file://, abfs://container/prefix or another fsspec URL "
             f"(default: $OBSML_STORE, else {DEFAULT_STORE})",
    )  # fmt: skip
    if not window:
        return
    when = "a duration before now (15m, 2h, 7d, 1w) or an ISO time (naive means UTC)"
    parser.add_argument("--since", type=_moment("--since"), default=since, metavar="WHEN",
                        help=f"from this time on: {when} (default: {since or 'from the start'})")
    parser.add_argument("--until", type=_moment("--until"), default=None, metavar="WHEN",
                        help=f"before this time: {when} (default: now)")


DEFAULT_STORE = "./obsml-data"  # as obsml.Settings' default store


def _moment(setting: str) -> Callable[[str], datetime | None]:
    def parse(text: str) -> datetime | None:
        from ._exceptions import ConfigError
        from ._query import moment

        try:
            return moment(text, datetime.now(timezone.utc), setting)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{setting}: ")) from None

    return parse


def _add_query(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = commands.add_parser(
        "query",
        help="run SQL over the store's spans, outbound calls, log records and model data (DuckDB)",
        description=(
            "Run SQL over views of the store in the window: spans (one row per request), dependencies (one row "
            "per outbound call, with its request's correlation id), logs (one row per log record), modeldata, one "
            "view per model-data identifier (inputs, predictions, labels...) and joined. The README's \"Reading "
            "the store\" lists their columns. Needs pip install 'obsml[query]'."
        ),
        epilog="example: obsml query \"select route, status_code, count(*) from spans group by all\" --since 1h",
    )
    query.add_argument("sql", metavar="SQL", help="the query (DuckDB's SQL)")
    add_store_options(query)
    query.add_argument("--format", choices=("table", "csv", "json", "jsonl", "parquet"), default="table",
                       help="table (default, fitted to the terminal), csv, json, jsonl, or parquet (needs --output)")
    query.add_argument("--output", metavar="FILE", help="write the result to FILE instead of standard output")
    query.set_defaults(handler=_run_query)


def _run_query(args: argparse.Namespace) -> int:
    from ._cli_query import run_query

    return run_query(args.sql, store=args.store, since=args.since, until=args.until, format=args.format,
                     output=args.output)


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._demo import DEFAULT_REQUESTS, DEFAULT_STORE, GUNICORN, MIN_REQUESTS, UVICORN

    demo = commands.add_parser(
        "demo",
        help="run the example credit model under obsml, send it traffic and summarise what was captured",
        description=(
            "Start the example FastAPI credit-scoring app under uvicorn with ObsmlMiddleware, send it a "
            "realistic mix of requests (small and large bodies, correlation ids, failures, streaming), "
            "stop it cleanly and summarise the spans read back from the store. With --wsgi, the example "
            "Flask app under gunicorn with two workers and ObsmlWSGIMiddleware instead. Run it from the "
            "repository root, where the examples package is."
        ),
    )
    demo.add_argument(
        "--wsgi",
        action="store_true",
        help="serve the WSGI (Flask) example under gunicorn with 2 workers instead of the ASGI one under uvicorn",
    )
    demo.add_argument(
        "--app",
        help=f"the app as module:attribute (default: {UVICORN.default_app}, with --wsgi {GUNICORN.default_app})",
    )
    demo.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"where obsml writes: a local path or an fsspec URL (default: {DEFAULT_STORE})",
    )
    demo.add_argument(
        "--requests",
        type=_at_least(MIN_REQUESTS),
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"how many requests to send (default: {DEFAULT_REQUESTS}, at least {MIN_REQUESTS})",
    )
    demo.set_defaults(handler=_run_demo)


def _add_logs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = commands.add_parser(
        "logs",
        help="recent requests, newest first, one line each (time, status, duration, route, model, correlation id…)",
        description=(
            "Print the requests in the store, newest first, one line each: time (UTC), status, duration, "
            "method and route, model/version, correlation id and exception. Filters combine (all must hold). "
            "A window with no data prints one line on stderr and exits 0."
        ),
    )
    add_store_options(logs)
    _filter_options(logs)
    logs.add_argument("--limit", type=_at_least(1), default=50, metavar="N",
                      help="print at most N requests, the newest (default: 50)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="print requests as they arrive, as obsml tail does (--since, --until, --limit do not apply)")
    logs.set_defaults(handler=_run_logs)


def _add_tail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser(
        "tail",
        help="print requests as they arrive, until Ctrl-C (the same as obsml logs --follow)",
        description=(
            "Print each request whose part file appears in the store from now on, oldest first, until "
            "interrupted (Ctrl-C: exit code 0). The folders of the current and the previous UTC hour are "
            "polled, so a part file arriving more than an hour late (a remote store after a long outage) is "
            "not printed. Requests appear once their part file is written: after OBSML_FLUSH_INTERVAL (1 s) "
            "for a local store."
        ),
    )
    add_store_options(tail, window=False)
    _filter_options(tail)
    tail.set_defaults(handler=_run_tail)


def _filter_options(command: argparse.ArgumentParser) -> None:
    filters = command.add_argument_group("filters")
    filters.add_argument("--status", type=_status, metavar="CODE",
                         help="a status class (5xx, 4xx...) or an exact code (503)")
    filters.add_argument("--model", help="this model name only")
    filters.add_argument("--version", help="this model version only")
    filters.add_argument("--route", help="this route template (/items/{id}) or this path (/items/42)")
    filters.add_argument("--correlation-id", metavar="ID",
                         help="the request(s) with this correlation id; obsml logs also prints each one's log "
                              "records and outbound calls under it, in time order")
    filters.add_argument(
        "--contains", metavar="TEXT",
        help="TEXT (in any case) in the request or response body; only bodies stored inline are searched "
             "(not those over OBSML_INLINE_LIMIT, stored apart, nor non-UTF-8 bodies)",
    )
    filters.add_argument("--errors", action="store_true", help="failed requests only: status >= 500 or an error")
    output = command.add_argument_group("output")
    output.add_argument("--bodies", action="store_true",
                        help="also print each request's and response's body (offloaded ones fetched from the store; "
                             "binary ones as a size and content type line)")
    output.add_argument("--format", choices=("text", "json"), default="text",
                        help="text lines (default) or one JSON object a line, bodies whole (base64 when binary)")
    output.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                        help="with tail or --follow: how often the store is looked at (default: 1)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600, got {text}")
    return value


def _status(text: str) -> tuple[int, int]:
    from ._logs import status_range

    try:
        return status_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_logs(args: argparse.Namespace) -> int:
    if args.follow:
        return _run_tail(args)
    from ._logs import run_logs

    return run_logs(args.store, _filters(args), since=args.since, until=args.until, limit=args.limit,
                    format=args.format, bodies=args.bodies)


def _run_tail(args: argparse.Namespace) -> int:
    from ._logs import run_tail

    return run_tail(args.store, _filters(args), interval=args.interval, format=args.format, bodies=args.bodies)


def _filters(args: argparse.Namespace) -> Filters:
    from ._logs import Filters

    return Filters(
        status=args.status, model=args.model, version=args.version, route=args.route,
        correlation_id=args.correlation_id, contains=args.contains, errors=args.errors,
    )


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import GUNICORN, UVICORN, run_demo

    server = GUNICORN if args.wsgi else UVICORN
    return run_demo(app=args.app, store=args.store, requests=args.requests, server=server)


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="serve an ASGI or WSGI app under uvicorn, gunicorn or granian, wrapped by obsml",
        description=(
            "Serve module:app wrapped by obsml (settings from OBSML_*), in every worker the server starts. "
            "ASGI or WSGI is detected (an async callable is ASGI, a callable of (environ, start_response) is "
            "WSGI; the README's \"obsml run and gunicorn\" gives the rule) unless --interface says; detecting "
            "imports the app once here. Options after module:app (or after --) go to the server."
        ),
        epilog="example: obsml run --workers 2 main:app --port 8080",
    )
    _run_options(run)
    run.add_argument("app", metavar="module:app", help="the app, as module:attribute")
    run.add_argument("server_options", nargs=argparse.REMAINDER, metavar="...", help="options for the server")
    run.set_defaults(handler=_run_run)


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", choices=("uvicorn", "gunicorn", "granian"),
                        help="the server (default: uvicorn for an ASGI app, gunicorn for a WSGI app)")
    parser.add_argument("--workers", type=_at_least(1), metavar="N", help="worker processes (default: the server's)")
    parser.add_argument("--interface", choices=("asgi", "wsgi"),
                        help="the app's interface, when it cannot be detected")


def _run_run(args: argparse.Namespace) -> int:
    from ._run import run

    # obsml's own options may also follow the app (obsml run main:app --server gunicorn); before any "--".
    options: list[str] = args.server_options
    cut = options.index("--") if "--" in options else len(options)
    ours = argparse.ArgumentParser(prog="obsml run", add_help=False, allow_abbrev=False, exit_on_error=False)
    _run_options(ours)
    try:
        found, theirs = ours.parse_known_args(options[:cut])
    except argparse.ArgumentError as exc:
        print(f"obsml run: {exc}", file=sys.stderr)
        return 2
    for name in ("server", "workers", "interface"):
        if getattr(found, name) is not None:
            setattr(args, name, getattr(found, name))
    return run(args.app, server=args.server, interface=args.interface, workers=args.workers,
               options=[*theirs, *options[cut + 1:]])


def _add_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="write one self-contained HTML report: health, dependencies, model data, quality, drift",
        description=(
            "Write an HTML file (plots embedded, nothing fetched when it opens) of the window: request rate, "
            "latency and failures per version, top exceptions, drops, outbound calls, error logs, each feature's "
            "and prediction's distribution against the reference, quality against labels, and the drift table. "
            "Needs pip install 'obsml[report]'."
        ),
        epilog="example: obsml report --since 7d --reference 14d..7d -o report.html",
    )
    add_store_options(report, since="7d")
    _model_data_options(report)
    report.add_argument("--task", choices=("classification", "regression"),
                        help="how the labels are scored (default: from the label's type)")
    report.add_argument("-o", "--output", default="obsml-report.html", metavar="FILE",
                        help="the HTML file to write (default: obsml-report.html)")
    report.set_defaults(handler=_run_report)


def _add_drift(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drift = commands.add_parser(
        "drift",
        help="the drift table of the window against a reference: exit status 1 when a feature drifted",
        description=(
            "Compare each feature and prediction of the window with the reference: population stability index, "
            "and a Kolmogorov-Smirnov (numbers) or chi-square (categories) test. Exit status 1 when any column is "
            "flagged, 0 when none is, 2 on a usage error: a scheduled job can decide to retrain. "
            "Needs pip install 'obsml[report]'."
        ),
        epilog="example: obsml drift --since 1d --reference train.parquet --format json",
    )
    add_store_options(drift, since="1d")
    _model_data_options(drift, reference_required=True)
    drift.add_argument("--format", choices=("text", "json"), default="text",
                       help="an aligned table (default) or one JSON object a line per column")
    drift.set_defaults(handler=_run_drift)


def _model_data_options(parser: argparse.ArgumentParser, reference_required: bool = False) -> None:
    parser.add_argument("--reference", required=reference_required, metavar="PERIOD_OR_FILE",
                        help="what the window is compared with: an earlier period START..END (2026-11-01..2026-11-08, "
                             "14d..7d) or a training-data file (.csv, .parquet, .jsonl) with the same column names")
    parser.add_argument("--model", help="this model only (default: the model with the most rows)")
    parser.add_argument("--version", help="this model version only (in the window; the reference keeps every one)")
    parser.add_argument("--threshold-psi", type=_positive, default=0.2, metavar="PSI",
                        help="flag a column whose population stability index is at least PSI (default: 0.2)")
    parser.add_argument("--threshold-p", type=_positive, default=0.01, metavar="P",
                        help="flag a column whose test's p-value is under P (default: 0.01)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _run_report(args: argparse.Namespace) -> int:
    from ._report import run_report
    from ._report_compare import Thresholds

    return run_report(args.store, since=args.since, until=args.until, output=args.output, reference=args.reference,
                      model=args.model, version=args.version, task=args.task,
                      thresholds=Thresholds(psi=args.threshold_psi, p_value=args.threshold_p))


def _run_drift(args: argparse.Namespace) -> int:
    from ._report import run_drift
    from ._report_compare import Thresholds

    return run_drift(args.store, since=args.since, until=args.until, reference=args.reference, model=args.model,
                     version=args.version, thresholds=Thresholds(psi=args.threshold_psi, p_value=args.threshold_p),
                     format=args.format)


def _add_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export",
        help="copy the store's new data objects to another URL (incremental, resumable, verified): for cron",
        description=(
            "Copy the store's data objects (part files of spans and log records, bodies, model data and its media) "
            "that DEST_URL does not hold yet, each written whole and checked (size; sha256 read back for bodies), "
            "recording each in a manifest under DEST_URL/_obsml/export/. A second run copies nothing; an "
            "interrupted one resumes. Exit status 0 when the destination is up to date, 1 when an object failed "
            "(each named on stderr) or another export to DEST_URL is running, 2 when a store cannot be used."
        ),
        epilog="example (cron): obsml export abfs://archive/obsml --store /var/obsml --since 2d",
    )
    export.add_argument("destination", metavar="DEST_URL",
                        help="where the copy goes: a local path, file://, abfs://container/prefix, another fsspec URL")
    add_store_options(export, window=False)
    export.add_argument("--since", type=_moment("--since"), default=None, metavar="WHEN",
                        help="only the date partitions (hours of spans and logs, days of the rest) that end after "
                             "this: a duration before now (2d, 12h) or an ISO time (default: every partition)")
    export.add_argument("--include", type=_includes("export"), default=None, metavar="KINDS",
                        help="comma-separated: traces (spans and log records), payloads (bodies), modeldata "
                             "(rows and media) (default: all three)")
    export.set_defaults(handler=_run_export)


def _includes(command: str) -> Callable[[str], tuple[str, ...]]:
    """``--include a,b``: names of the ``INCLUDES`` of the command's module (``obsml._<command>``)."""

    def parse(text: str) -> tuple[str, ...]:
        allowed = importlib.import_module(f"obsml._{command}").INCLUDES
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        if not names or any(name not in allowed for name in names):
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(allowed)}, got {text!r}")
        return names

    return parse


def _run_export(args: argparse.Namespace) -> int:
    from ._export import INCLUDES, run_export

    return run_export(args.store, args.destination, since=args.since, include=args.include or tuple(INCLUDES))


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="whether obsml's writers are alive and dropped anything: exit status 1 when they did",
        description=(
            "Read the status files obsml's writers (one per server process) keep in the store, and sum them: "
            "writers alive, stale (not seen for 3 heartbeats, without having exited) or exited; requests "
            "captured; objects written and spooled; drops by reason and kind. A writer counts when it was "
            "alive in the window, with its latest counters: everything since that process started (so no drop "
            "in the window is missed, and a restart starts afresh). Exit status 0 when nothing was dropped, 1 "
            "when something was (for a cron job or a CI gate), 2 when the store cannot be read."
        ),
    )
    status.add_argument(
        "--store",
        default=os.environ.get("OBSML_STORE", "./obsml-data"),
        help="the store: a local path or an fsspec URL (default: OBSML_STORE, else ./obsml-data)",
    )
    status.add_argument(
        "--since", default="1d", help="start of the window: a duration before now (15m, 2h, 7d) or an ISO time "
        "(default: 1d)",
    )
    status.add_argument("--until", help="end of the window, as --since (default: now)")
    status.add_argument("--format", choices=("text", "json"), default="text", dest="output_format",
                        help="text: a table (default); json: totals and writers, counters named as obsml.stats()")
    status.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from ._status_command import run_status

    return run_status(args.store, args.since, args.until, args.output_format)


def _add_retention(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retention = commands.add_parser(
        "retention",
        help="delete the store's date partitions older than a limit (a dry run unless --yes)",
        description=(
            "List the whole date partitions of the store that ended more than --older-than ago (an hour of "
            "traces/ and logs/, a day of payloads/, of each model-data identifier and its media, of writers' "
            "statuses), with their objects and bytes; --yes deletes them. Never the current partition, nor one "
            "a writer that has not exited may still write (from its status, said in the output). Exit status 0 "
            "when listed or deleted, 1 when a partition could not be deleted (run it again to finish), 2 when "
            "the store cannot be read."
        ),
        epilog="example: obsml retention --older-than 30d --include traces,payloads --yes",
    )
    add_store_options(retention, window=False)
    retention.add_argument("--older-than", required=True, type=_moment("--older-than"), metavar="AGE",
                           help="partitions that ended at least AGE ago (30d, 12h, 0s) or by an ISO time")
    retention.add_argument("--include", type=_includes("retention"), default="traces,payloads,modeldata,status",
                           metavar="LIST", help="which folders, comma-separated: traces (with logs/), payloads, "
                                "modeldata (with modeldata-media/), status (writers' statuses) (default: all four)")
    retention.add_argument("--yes", action="store_true", help="delete them (default: only list them)")
    retention.set_defaults(handler=_run_retention)


def _run_retention(args: argparse.Namespace) -> int:
    from ._retention import run_retention

    # argparse parses the string default with _includes too: a tuple either way.
    return run_retention(args.store, cutoff=args.older_than, includes=args.include, delete=args.yes)


def _add_compact(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compact = commands.add_parser(
        "compact",
        help="rewrite closed hours (and model-data days) of the store into one Parquet file each",
        description=(
            "Rewrite each closed partition of the store (an hour folder of traces/ and logs/, a day of a model-data "
            "identifier, ended more than --older-than ago) from its part files into one compacted Parquet file and "
            "a manifest naming the parts it replaced; queries read it instead of them. Replaced part files are "
            "deleted by a later run, once --grace has passed. Safe under concurrent queries and for cron: exit "
            "status 0 when done, 1 when a partition could not be compacted, 2 when the store cannot be read. "
            "Needs pip install 'obsml[query]'."
        ),
        epilog="example: obsml compact --older-than 2h   (README: \"Compaction\")",
    )
    add_store_options(compact, window=False)
    compact.add_argument("--older-than", type=_duration("--older-than"), default="2h", metavar="DURATION",
                         help="compact partitions that ended at least this long ago (default: 2h)")
    compact.add_argument("--grace", type=_duration("--grace"), default="1h", metavar="DURATION",
                         help="delete replaced part files once their manifest is this old (default: 1h)")
    compact.set_defaults(handler=_run_compact)


def _duration(setting: str) -> Callable[[str], timedelta]:
    def parse(text: str) -> timedelta:
        from ._exceptions import ConfigError
        from ._query import duration

        try:
            return duration(text, setting)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{setting}: ")) from None

    return parse


def _run_compact(args: argparse.Namespace) -> int:
    from ._compact import run_compact

    return run_compact(args.store, older_than=args.older_than, grace=args.grace)


def _add_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config",
        help="runtime switches: turn capture, sampling and collection on and off in running servers",
        description=(
            "Write or show the control object in the store (_obsml/control/settings.json), which every running "
            "middleware and Collector re-reads on its writer: at each flush interval for a local store, every "
            "OBSML_CONTROL_INTERVAL (10 s) for a remote one. A scope is all services, a service, a model of it or "
            "one version; the most specific wins, and a switch overrides keywords, environment and defaults. Each "
            "change is recorded under _obsml/control-history/."
        ),
    )
    actions = config.add_subparsers(title="actions", dest="action", metavar="<action>", required=True)
    set_ = actions.add_parser("set", help="set switches: enabled, sample_rate, collect_enabled, capture_bodies",
                              epilog="example: obsml config set enabled=false sample_rate=0.1 --service credit")
    set_.add_argument("assignments", nargs="+", metavar="NAME=VALUE", help="a switch and its value")
    unset = actions.add_parser("unset", help="remove switches from a scope (what is below them applies again)")
    unset.add_argument("names", nargs="+", metavar="NAME", help="a switch")
    show = actions.add_parser("show", help="each switch's effective value for a scope, and where it comes from")
    show.add_argument("--format", choices=("text", "json"), default="text", dest="output_format",
                      help="text (default) or json")
    for action in (set_, unset, show):
        add_store_options(action, window=False)
        action.add_argument("--service", help="this service only (default: all services; show: OBSML_SERVICE)")
        action.add_argument("--model", help="this model of the service only (needs --service)")
        action.add_argument("--version", help="this version of the model only (needs --model)")
    config.set_defaults(handler=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from ._config_command import run_config_set, run_config_show, run_config_unset

    scope = (args.service, args.model, args.version)
    if args.action == "set":
        return run_config_set(args.store, args.assignments, scope)
    if args.action == "unset":
        return run_config_unset(args.store, args.names, scope)
    return run_config_show(args.store, scope, args.output_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``obsml`` with ``argv`` (default: the process arguments); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed why
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Command | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("obsml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (``obsml status | head``): the output is cut, quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's flush at exit must not fail again
        return 128 + 13  # as a process killed by SIGPIPE reports it


if __name__ == "__main__":
    raise SystemExit(main())
