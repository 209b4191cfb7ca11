"""``obsml demo``: the example credit model under a real server, real traffic, and what obsml captured.

The example app runs as a separate process with ``OBSML_STORE`` set, exactly as a user would
run it: the FastAPI app under uvicorn, or (``--wsgi``) the Flask app under gunicorn with two
forked workers. A :class:`Server` says which command to run and which signal stops it without
losing spans. The demo waits for ``/health``, sends the traffic of ``examples/demo_traffic.py``
(found in the working directory, as the servers find the example apps), stops the server, then
reads the new part files under ``traces/`` back through the store's reader (``_reader``) and
prints the example's summary next to what it sent, with the spans each process wrote. When the
app's ``/health`` names its service, model and version (the credit examples' do), the demo then
collects labels for some of the requests, as a later batch job would, and prints the head of the
model data joined back by ``obsml.modeldata`` (DuckDB and pandas: the ``demo`` extra has them).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from ._exceptions import ObsmlError
from ._settings import Settings

if TYPE_CHECKING:  # imported when the demo runs: fsspec would slow down every `obsml --help`
    from ._reader import Span, StoreReader

DEFAULT_STORE = "./obsml-data"
DEFAULT_REQUESTS = 40
MIN_REQUESTS = 5

# Printed at the end, to run over what the demo wrote: requests and latency by route and status.
QUERY = ("select route, status_code, count(*) as requests, round(median(duration_ms), 1) as median_ms "
         "from spans group by all order by all")
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 15.0


class DemoError(Exception):
    """Something that stops the demo; the message is printed as is."""


@dataclasses.dataclass(frozen=True)
class Server:
    """How the demo serves an app: ``python -m <module> <args(app, port, cwd)>``, and how it stops."""

    label: str
    module: str
    default_app: str
    args: Callable[[str, int, str], list[str]]
    stop_signal: signal.Signals  # a graceful stop, after which obsml has flushed
    stop_note: str


def _gunicorn_args(app: str, port: int, cwd: str) -> list[str]:
    return [app, "--bind", f"127.0.0.1:{port}", "--chdir", cwd, "--workers", "2", "--preload",
            "--graceful-timeout", "10", "--no-control-socket"]  # no control socket left in $HOME


UVICORN = Server(
    "uvicorn", "uvicorn", "examples.fastapi_credit.app:app",
    lambda app, port, cwd: [app, "--host", "127.0.0.1", "--port", str(port), "--app-dir", cwd, "--no-access-log"],
    signal.SIGINT, "its lifespan shutdown flushes obsml",
)  # fmt: skip
GUNICORN = Server(
    "gunicorn (2 workers)", "gunicorn", "examples.flask_credit.app:app", _gunicorn_args,
    signal.SIGTERM, "each worker flushes obsml as it exits",
)  # fmt: skip


def run_demo(app: str | None, store: str, requests: int, out: IO[str] | None = None, server: Server = UVICORN) -> int:
    """Run the demo; returns the exit status (0 when the server ran and spans were read back)."""
    out = out or sys.stdout
    try:
        status, scored_id = _run(server, app or server.default_app, store, requests, out)
    except DemoError as exc:
        print(f"obsml demo: error: {exc}", file=sys.stderr)
        return 1
    _write_report(out, store)
    _print_next_commands(out, store, scored_id)
    return status


def _write_report(out: IO[str], store: str) -> None:
    """End with the HTML report of the hour the demo ran (``obsml report``), next to a local store."""
    import io
    from datetime import timedelta

    from ._report import missing_extra, run_report

    if message := missing_extra("report", ("duckdb", "scipy", "matplotlib")):
        print(f"\nNo report: {message}", file=out, flush=True)
        return
    local = "://" not in store or store.startswith("file://")
    folder = os.path.dirname(os.path.abspath(store.removeprefix("file://"))) if local else os.getcwd()
    output = os.path.join(folder, "obsml-report.html")
    print(f"\nReport of this run (obsml report --since 1h --store {shlex.quote(store)} -o {shlex.quote(output)}):",
          file=out, flush=True)
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    if run_report(store, since=since, until=None, output=output, out=io.StringIO()) == 0:
        print(f"  {output}", file=out, flush=True)


def _print_next_commands(out: IO[str], store: str, scored_id: str | None) -> None:
    """Commands that read what the demo just wrote, to copy."""
    where = f"--store {shlex.quote(store)}"
    print(f"\nRead it back (from this directory):\n  obsml logs --errors {where}\n  obsml query {shlex.quote(QUERY)} "
          f"{where}", file=out, flush=True)
    if scored_id:  # a request the model answered, with the scoring code's log line under it
        print(f"  obsml logs --correlation-id {shlex.quote(scored_id)} {where}", file=out, flush=True)


def _run(server: Server, app: str, store_url: str, requests: int, out: IO[str]) -> tuple[int, str | None]:
    """The demo's exit status, and the correlation id of one request the model answered."""
    cwd = os.getcwd()
    traffic = _load_traffic(cwd)
    httpx = _import_demo_dependency("httpx")
    for name in (server.module, "duckdb", "pandas"):
        _import_demo_dependency(name)
    if store_url.startswith("memory:"):
        raise DemoError("a memory:// store is not shared with the server process: use a path or a URL")
    if "://" not in store_url and "::" not in store_url:
        store_url = os.path.abspath(store_url)
    try:
        settings = Settings.load(store=store_url)
        reader = _open_store(settings.store)
    except ObsmlError as exc:
        raise DemoError(str(exc)) from None
    before = {*reader.files("traces"), *reader.files("payloads")}

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for the server's lifetime
        prefix="obsml-demo-server-", suffix=".log", delete=False
    )
    say = traffic.say
    say(out, f"obsml demo: starting {app} under {server.label} on {base}")
    say(out, f"  store {reader.shown()}  (server log {log.name})")
    began = datetime.now(timezone.utc)
    with log, _serve(server, app, port, cwd, store_url, log) as process:
        started = time.monotonic()
        health = _wait_until_up(httpx, process, base, log.name)
        say(out, f"  server up in {time.monotonic() - started:.1f} s; sending {requests} requests ...")
        started = time.monotonic()
        sent = traffic.send_traffic(httpx, base, requests)
        elapsed = time.monotonic() - started
        say(out, f"  sent {traffic.describe_sent(sent)} in {elapsed:.1f} s")
        for line in traffic.client_problems(sent):
            say(out, f"  ! {line}")
        say(out, f"  stopping the server with {server.stop_signal.name} ({server.stop_note}) ...")
        code = _stop(process, server.stop_signal)
        say(out, f"  server exited with code {code}")

    spans, by_pid, new_traces, new_payloads = _read_back(reader, before)
    say(out, "")
    summary = traffic.summarise(
        out, reader, sent, settings.inline_limit, spans, by_pid, new_traces, new_payloads, log.name
    )
    scored_id = next((r.correlation_id for r in sent if r.status == 200 and r.correlation_id and r.rows), None)
    if not {"service", "model", "version"} <= set(health):
        return int(summary), scored_id
    labels = traffic.collect_labels(sent, store_url, health)
    say(out, "")
    say(out, f"Labels for {len(labels)} of these requests, collected later as a batch job would, into {reader.shown()}")
    model_data = traffic.show_model_data(out, store_url, health["model"], began, sent, labels)
    return int(summary) or int(model_data), scored_id


# --- preparation ---------------------------------------------------------------------------------


def _load_traffic(cwd: str) -> Any:
    """``examples/demo_traffic.py`` of the working directory: the examples are not installed."""
    path = os.path.join(cwd, "examples", "demo_traffic.py")
    if not os.path.isfile(path):
        raise DemoError(f"no examples package in {cwd}: run `obsml demo` from the repository root")
    spec = importlib.util.spec_from_file_location("obsml_demo_traffic", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _import_demo_dependency(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise DemoError(f"the demo needs {name}: pip install 'obsml[demo]'") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the server ----------------------------------------------------------------------------------


@contextmanager
def _serve(
    server: Server, app: str, port: int, cwd: str, store_url: str, log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "OBSML_STORE": store_url, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", server.module, *server.args(app, port, cwd)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=os.name == "posix",  # a Ctrl-C reaches only the demo, which stops the server once
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            _stop(process, server.stop_signal)


def _wait_until_up(httpx: Any, process: subprocess.Popen[bytes], base: str, log_name: str) -> dict[str, Any]:
    """The app's answer to ``GET /health`` (a JSON object, else empty), once it answers 200."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise DemoError(f"the server exited with code {code} before answering:\n{_tail(log_name)}")
        try:
            response = httpx.get(f"{base}/health", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}
        raise DemoError(f"GET /health answered {response.status_code}:\n{_tail(log_name)}")
    raise DemoError(f"the server did not answer /health within {STARTUP_TIMEOUT_S:g} s:\n{_tail(log_name)}")


def _stop(process: subprocess.Popen[bytes], graceful: signal.Signals) -> int:
    """``graceful`` (see :class:`Server`); terminate, then kill, if the server hangs."""
    if process.poll() is None:
        if os.name == "posix":
            process.send_signal(graceful)
        else:  # no SIGINT for a child on Windows: spans still queued may be lost
            process.terminate()
        try:
            return process.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                return process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
    return process.wait()


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return "".join(file.readlines()[-lines:]).rstrip() or "(the server log is empty)"
    except OSError:
        return "(no server log)"


# --- reading back --------------------------------------------------------------------------------


def _open_store(url: str) -> StoreReader:
    from ._reader import StoreReader

    return StoreReader.open(url)


def _read_back(reader: StoreReader, before: set[str]) -> tuple[list[Span], Counter[str], list[str], list[str]]:
    """New spans, how many each process wrote (part files are ``<pid>-<hex>-<seq>.jsonl``), new files."""
    traces = [path for path in reader.part_files() if path not in before]
    payloads = [path for path in reader.files("payloads") if path not in before]
    spans: list[Span] = []
    by_pid: Counter[str] = Counter()
    for path in traces:
        found = reader.read_part(path)
        spans.extend(found)
        by_pid[path.rsplit("/", 1)[-1].split("-", 1)[0]] += len(found)
    return spans, by_pid, traces, payloads
