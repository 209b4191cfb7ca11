"""``obsml logs`` and ``obsml tail`` over a store written by the real middleware under uvicorn and gunicorn."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from adlfs import AzureBlobFileSystem
from apps import make_app, pattern
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import read_spans, running_gunicorn, running_server
from request_records import Call, Line, raised, write_calls, write_lines

import obsml
from obsml.cli import main

# Over the inline limit (64 KiB), so offloaded: one UTF-8 text, one binary.
LARGE_TEXT = json.dumps({"rows": [f"row-{n:05d} é" for n in range(8000)]}, ensure_ascii=False).encode()
LARGE_BINARY = pattern(70_000)
ASGI = {"service": "credit", "model": "best_model", "version": "10"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store, written by two uvicorn apps (two models) and a gunicorn worker (a third)."""
    store = tmp_path_factory.mktemp("logs") / "store"
    sent: list[tuple[str, str, str, dict[str, Any]]] = [
        ("asgi-needle", "POST", "/echo", {"json": {"income": 5, "note": "a Needle-In-Body here"}}),
        ("asgi-large-text", "POST", "/echo", {"content": LARGE_TEXT, "headers": {"content-type": "application/json"}}),
        ("asgi-large-binary", "POST", "/echo", {"content": LARGE_BINARY}),
        ("asgi-binary", "POST", "/echo", {"content": bytes(range(256)), "headers": {"content-type": "image/png"}}),
        ("asgi-fail", "GET", "/fail/before", {}),
        ("asgi-fail-during", "GET", "/fail/during", {}),  # a 200 already sent, then an exception: an error
        ("asgi-404", "GET", "/status/404", {}),
        ("asgi-503", "GET", "/status/503", {}),
        ("asgi-escape", "GET", "/status/404/%1b[31mred", {}),  # an unknown route: the path, with ESC in it
    ]
    with running_server(make_app(store=str(store), **ASGI)) as url, httpx.Client(base_url=url) as client:
        for correlation_id, method, path, options in sent:
            headers = {"x-correlation-id": correlation_id, **options.pop("headers", {})}
            with contextlib.suppress(httpx.RemoteProtocolError):  # /fail/during breaks the response off
                client.request(method, path, headers=headers, **options)
    other = make_app(store=str(store), service="credit", model="other_model", version="11")
    with running_server(other) as url:
        httpx.post(f"{url}/echo", content=b"{}", headers={"x-correlation-id": "asgi-other"})
    env = {"OBSML_SERVICE": "credit", "OBSML_MODEL": "flask_model", "OBSML_VERSION": "3"}
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "1", env=env) as server:
        httpx.post(f"{server.url}/echo", content=b"flask says hi", headers={"x-correlation-id": "wsgi-echo"})
        httpx.get(f"{server.url}/fail/before", headers={"x-correlation-id": "wsgi-fail"})
    return store


ALL = {
    "asgi-needle", "asgi-large-text", "asgi-large-binary", "asgi-binary", "asgi-fail", "asgi-fail-during",
    "asgi-404", "asgi-503", "asgi-escape", "asgi-other", "wsgi-echo", "wsgi-fail",
}


def logs(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, bytes]:
    code = main(["logs", *args])
    captured = capsysbinary.readouterr()
    return code, captured.out, captured.err


def json_lines(capsysbinary: pytest.CaptureFixture[bytes], store: Path, *args: str) -> list[dict[str, Any]]:
    code, out, err = logs(capsysbinary, "--store", str(store), "--format", "json", *args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_logs_prints_one_line_per_request_newest_first(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = logs(capsysbinary, "--store", str(store))
    assert code == 0 and err == b""
    lines = out.decode().splitlines()
    assert len(lines) == len(ALL)
    times = [line.split()[0] for line in lines]
    assert times == sorted(times, reverse=True)
    [failed] = [line for line in lines if "asgi-fail " in line + " "]
    assert failed.split()[1:4] == ["500", failed.split()[2], "GET"]
    assert "/fail/before" in failed and "best_model/10" in failed
    assert failed.endswith("RuntimeError: model exploded before answering")
    # Columns are aligned: the correlation ids all start at the same place.
    starts = {line.index(cid) for line in lines for cid in ALL if f" {cid} " in line + " "}
    assert len(starts) == 1
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(["--status", "5xx"], {"asgi-fail", "asgi-503", "wsgi-fail"}, id="status class 5xx"),
        pytest.param(["--status", "4XX"], {"asgi-404", "asgi-escape"}, id="status class 4xx"),
        pytest.param(["--status", "503"], {"asgi-503"}, id="exact status"),
        pytest.param(["--model", "other_model"], {"asgi-other"}, id="model"),
        pytest.param(["--version", "3"], {"wsgi-echo", "wsgi-fail"}, id="version"),
        pytest.param(["--route", "/status/{code}"], {"asgi-404", "asgi-503"}, id="route template"),
        pytest.param(["--route", "/status/404"], {"asgi-404"}, id="route as a path"),
        pytest.param(["--correlation-id", "wsgi-echo"], {"wsgi-echo"}, id="correlation id"),
        pytest.param(["--contains", "needle-in-BODY"], {"asgi-needle"}, id="contains, in any case"),
        pytest.param(["--contains", "flask says"], {"wsgi-echo"}, id="contains, in a gunicorn request"),
        pytest.param(["--errors"], {"asgi-fail", "asgi-fail-during", "asgi-503", "wsgi-fail"}, id="errors"),
        pytest.param(["--errors", "--model", "best_model"], {"asgi-fail", "asgi-fail-during", "asgi-503"},
                     id="filters combine"),
        pytest.param(["--correlation-id", "x' OR '1'='1"], set(), id="text is a parameter, not SQL"),
    ],
)
def test_each_filter_keeps_the_requests_it_names_and_only_those(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes], options: list[str], expected: set[str]
) -> None:
    assert {row["correlation_id"] for row in json_lines(capsysbinary, store, *options)} == expected


def test_contains_does_not_search_offloaded_bodies(store: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert json_lines(capsysbinary, store, "--contains", "row-00042") == []


def test_limit_keeps_the_newest(store: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    every = json_lines(capsysbinary, store)
    assert json_lines(capsysbinary, store, "--limit", "3") == every[:3]
    assert [row["correlation_id"] for row in every[:2]] == ["wsgi-fail", "wsgi-echo"]


@pytest.mark.parametrize("status", ["5x", "600", "abc", "50", "5xxx"])
def test_a_status_that_is_neither_a_class_nor_a_code_is_a_usage_error(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes], status: str
) -> None:
    code, out, err = logs(capsysbinary, "--store", str(store), "--status", status)
    assert code == 2 and out == b""
    assert b"expected a status class such as 5xx" in err and b"Traceback" not in err


def test_json_lines_parse_back_with_the_views_column_names(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    [row] = json_lines(capsysbinary, store, "--correlation-id", "asgi-fail")
    assert row["status_code"] == 500 and row["error"] is True
    assert (row["model"], row["version"], row["service"]) == ("best_model", "10", "credit")
    assert (row["method"], row["route"], row["path"]) == ("GET", "/fail/before", "/fail/before")
    assert row["exception_type"] == "RuntimeError"
    assert datetime.fromisoformat(row["start_time"]).utcoffset() is not None
    assert len(row["trace_id"]) == 32 and len(row["span_id"]) == 16
    assert row["duration_ms"] > 0
    assert "request_body" not in row  # bodies only with --bodies


def test_bodies_fetch_offloaded_bodies_byte_identical(store: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    [text] = json_lines(capsysbinary, store, "--bodies", "--correlation-id", "asgi-large-text")
    assert text["request_body_uri"] and text["request_body_encoding"] == "utf-8"
    assert text["request_body"].encode() == LARGE_TEXT and text["response_body"].encode() == LARGE_TEXT
    [binary] = json_lines(capsysbinary, store, "--bodies", "--correlation-id", "asgi-large-binary")
    assert binary["request_body_uri"] and binary["request_body_encoding"] == "base64"
    assert base64.b64decode(binary["request_body"]) == LARGE_BINARY == base64.b64decode(binary["response_body"])
    # As text lines, into a pipe: the bytes as they are.
    code, out, _ = logs(capsysbinary, "--store", str(store), "--bodies", "--correlation-id", "asgi-large-text")
    assert code == 0
    assert out.count(b"\n" + LARGE_TEXT + b"\n") == 2
    assert f"request: application/json, {len(LARGE_TEXT)} bytes\n".encode() in out


def test_bodies_show_binary_ones_as_a_size_and_content_type_line(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, _ = logs(capsysbinary, "--store", str(store), "--bodies", "--correlation-id", "asgi-binary")
    assert code == 0
    line, request, response = out.decode().splitlines()
    assert "asgi-binary" in line
    assert request == "  request: image/png, 256 bytes, binary, not shown (--format json has it as base64)"
    assert response.startswith("  response: image/png, 256 bytes, binary")
    [row] = json_lines(capsysbinary, store, "--bodies", "--correlation-id", "asgi-binary")
    assert base64.b64decode(row["request_body"]) == bytes(range(256))


def test_inline_bodies_print_under_their_line(store: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, _ = logs(capsysbinary, "--store", str(store), "--bodies", "--correlation-id", "wsgi-echo")
    assert code == 0
    assert out.decode().splitlines()[1:] == [
        "  request: 13 bytes", "flask says hi", "  response: application/octet-stream, 13 bytes", "flask says hi",
    ]


def test_control_characters_from_a_request_are_escaped_on_the_line(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, _ = logs(capsysbinary, "--store", str(store), "--correlation-id", "asgi-escape")
    assert code == 0
    assert b"\x1b" not in out and b"GET /status/404/\\x1b[31mred" in out


def on_a_terminal(columns: int, *args: str) -> tuple[list[str], bytes]:
    """``obsml logs *args`` in a subprocess writing to a pseudo-terminal ``columns`` wide: its lines and stderr."""
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "obsml.cli", "logs", *args], stdout=secondary,
            stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": str(columns)}, timeout=120, check=True,
        )
        os.close(secondary)
        out = b""
        with contextlib.suppress(OSError):  # EIO once everything written is read
            while chunk := os.read(primary, 65536):
                out += chunk
    finally:
        os.close(primary)
    return out.decode().split("\r\n")[:-1], result.stderr


def test_on_a_terminal_lines_are_cut_to_its_width(store: Path) -> None:
    lines, stderr = on_a_terminal(120, "--store", str(store))
    assert stderr == b"" and len(lines) == len(ALL)
    assert max(map(len, lines)) == 120
    [failed] = [line for line in lines if "asgi-fail " in line + " "]
    assert failed.endswith("…") and "RuntimeError" in failed


def test_into_a_pipe_lines_are_whole(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    code, out, _ = logs(capsysbinary, "--store", str(store), "--correlation-id", "asgi-fail")
    assert code == 0 and out.decode().endswith("RuntimeError: model exploded before answering\n")


@pytest.mark.parametrize(
    "window", [["--until", "2001-01-01"], ["--since", "2001-01-01", "--until", "2001-01-02T00:00"]]
)
def test_a_window_with_no_data_says_so_in_one_line(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes], window: list[str]
) -> None:
    code, out, err = logs(capsysbinary, "--store", str(store), *window)
    assert (code, out, err) == (0, b"", b"obsml logs: no data in this window\n")


def test_an_empty_store_has_no_data(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "nothing").mkdir()  # there, and empty (a mistyped one: test_cli)
    assert logs(capsysbinary, "--store", str(tmp_path / "nothing")) == (0, b"", b"obsml logs: no data in this window\n")


def test_a_window_where_nothing_matches_says_so(store: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = logs(capsysbinary, "--store", str(store), "--model", "nobody")
    assert (code, out, err) == (0, b"", b"obsml logs: no requests match in this window\n")


def test_since_keeps_the_window(store: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    every = json_lines(capsysbinary, store)
    third = every[2]["start_time"]
    assert json_lines(capsysbinary, store, "--since", third) == every[:3]
    assert json_lines(capsysbinary, store, "--until", third) == every[3:]


class Follower:
    """``obsml tail`` (or ``logs --follow``) as a subprocess, its output read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "obsml.cli", *args, "--interval", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None and self.process.stderr is not None
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()
        assert self.process.stderr.readline() == b"obsml tail: following new requests (Ctrl-C to stop)\n"

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.decode())

    def line_with(self, text: str) -> str:
        """The next line holding ``text`` (the lines before it are skipped)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}")

    def interrupt(self) -> tuple[int, list[str], bytes]:
        """Ctrl-C: the exit code, the lines not read yet, and stderr."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(30)
        self.reader.join(30)
        assert self.process.stderr is not None
        return code, list(self.lines.queue), self.process.stderr.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join(30)
        for stream in (self.process.stdout, self.process.stderr):
            assert stream is not None
            stream.close()


@pytest.fixture
def follow() -> Iterator[Any]:
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        started.append(Follower(*args))
        return started[-1]

    yield start
    for follower in started:
        follower.close()


@pytest.mark.parametrize("command", [["tail"], ["logs", "--follow"]])
def test_tail_prints_requests_made_after_it_started_and_stops_cleanly_on_sigint(
    tmp_path: Path, follow: Any, command: list[str]
) -> None:
    store = tmp_path / "store"
    app = make_app(store=str(store), flush_interval=0.05, **ASGI)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        client.get("/status/503", headers={"x-correlation-id": "before-tail"})
        assert obsml.flush(10)
        follower = follow(*command, "--store", str(store), "--status", "5xx")
        client.get("/status/201", headers={"x-correlation-id": "filtered-out"})
        client.get("/status/503", headers={"x-correlation-id": "after-tail"})
        line = follower.line_with("after-tail")
        client.get("/status/504", headers={"x-correlation-id": "last"})
        follower.line_with("last")
    assert line.split()[1] == "503" and "GET /status/{code}" in line and "best_model/10" in line
    code, unread, stderr = follower.interrupt()
    assert (code, unread, stderr) == (0, [], b"")


def test_tail_prints_json_lines_and_bodies(tmp_path: Path, follow: Any) -> None:
    store = tmp_path / "store"
    with running_server(make_app(store=str(store), flush_interval=0.05, **ASGI)) as url:
        follower = follow("tail", "--store", str(store), "--format", "json", "--bodies")
        httpx.post(f"{url}/echo", content=LARGE_TEXT, headers={"x-correlation-id": "tailed"})
        row = json.loads(follower.line_with("tailed"))
    assert row["request_body"].encode() == LARGE_TEXT and row["status_code"] == 200
    assert follower.interrupt()[0] == 0


@pytest.mark.parametrize("command", ["logs", "tail"])
def test_without_duckdb_the_commands_say_which_install_brings_it(
    store: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)  # what `import duckdb` does when it is not installed
    assert main([command, "--store", str(store)]) == 2
    needs = f"obsml {command}: reading the store needs DuckDB: pip install 'obsml[query]'\n"
    assert capsysbinary.readouterr() == (b"", needs.encode())


def test_logs_and_tail_read_an_azure_blob_store(
    azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes], follow: Any,
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)  # tail inherits it
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    store = f"abfs://{azure_container.container_name}/obsml"
    try:
        with running_server(make_app(store=store, flush_interval=0.05, **ASGI)) as url:
            httpx.get(f"{url}/status/503", headers={"x-correlation-id": "azure-before"})
            assert obsml.flush(10)
            follower = follow("tail", "--store", store, "--format", "json", "--bodies")
            httpx.post(f"{url}/echo", content=LARGE_TEXT, headers={"x-correlation-id": "azure-large"})
            tailed = json.loads(follower.line_with("azure-large"))
        assert obsml.flush(10)
        assert [row["correlation_id"] for row in json_lines(capsysbinary, store)] == ["azure-large", "azure-before"]
        [row] = json_lines(capsysbinary, store, "--bodies", "--correlation-id", "azure-large")
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    assert row["request_body_uri"].startswith(f"{store}/payloads/")
    assert row["request_body"].encode() == LARGE_TEXT == tailed["response_body"].encode()
    assert follower.interrupt()[0] == 0


def test_logs_reads_hour_folders_newest_first_across_days(
    store: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Spans of the real store, moved to seven hours over two days (one part file each): the newest come
    first, whichever batch of hour folders they are read in."""
    [line] = [
        line for part in store.glob("traces/*/*/*/*/*.jsonl") for line in part.read_text().splitlines()
        if '"obsml.correlation_id":"asgi-404"' in line
    ]
    moved = tmp_path / "moved"
    hours = [datetime(2026, 3, 1, 20, tzinfo=timezone.utc) + timedelta(hours=3 * n) for n in range(7)]
    for n, hour in enumerate(hours):
        span = json.loads(line)
        span["start_time"] = span["end_time"] = (hour + timedelta(minutes=59)).isoformat()
        span["attributes"]["obsml.correlation_id"] = f"hour-{n}"
        folder = moved / f"traces/{hour:%Y/%m/%d/%H}"
        folder.mkdir(parents=True)
        (folder / "1-abcd-000001.jsonl").write_text(json.dumps(span) + "\n")
    (moved / "traces/2026/03/notaday").mkdir()

    def ids(*options: str) -> list[str]:
        return [row["correlation_id"] for row in json_lines(capsysbinary, moved, *options)]

    assert ids() == [f"hour-{n}" for n in reversed(range(7))]
    assert ids("--limit", "4") == ["hour-6", "hour-5", "hour-4", "hour-3"]
    assert ids("--since", hours[5].isoformat()) == ["hour-6", "hour-5"]
    assert ids("--until", hours[2].isoformat(), "--limit", "1") == ["hour-1"]
    assert ids("--since", hours[1].isoformat(), "--until", (hours[1] + timedelta(minutes=59)).isoformat()) == []


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "soon"])
def test_tail_refuses_an_interval_that_is_not_a_positive_number_of_seconds(
    capsysbinary: pytest.CaptureFixture[bytes], interval: str
) -> None:
    assert main(["tail", "--interval", interval]) == 2
    assert b"--interval" in capsysbinary.readouterr().err


def real_span_line(store: Path, correlation_id: str) -> str:
    return next(
        line for part in store.glob("traces/*/*/*/*/*.jsonl") for line in part.read_text().splitlines()
        if f'"obsml.correlation_id":"{correlation_id}"' in line
    )


def test_a_part_file_duckdb_cannot_read_is_one_line_and_exit_code_2(
    store: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    broken = tmp_path / "broken"
    folder = broken / "traces/2026/03/01/20"
    folder.mkdir(parents=True)
    (folder / "1-abcd-000001.jsonl").write_text(real_span_line(store, "asgi-404") + "\n{not json\n")
    code, out, err = logs(capsysbinary, "--store", str(broken))
    assert (code, out) == (2, b"")
    assert err.startswith(f"obsml logs: cannot read {broken}: ".encode()) and err.count(b"\n") == 1


def test_tail_says_once_that_a_part_file_cannot_be_read_and_goes_on(
    store: Path, tmp_path: Path, follow: Any
) -> None:
    followed = tmp_path / "followed"
    folder = followed / f"traces/{datetime.now(timezone.utc):%Y/%m/%d/%H}"
    folder.mkdir(parents=True)
    follower = follow("tail", "--store", str(followed))
    (folder / "1-abcd-000001.jsonl").write_text("{not json\n")
    span = json.loads(real_span_line(store, "asgi-404"))
    span["attributes"]["obsml.correlation_id"] = "after-the-broken-one"
    (folder / "1-abcd-000002.jsonl").write_text(json.dumps(span) + "\n")
    assert "after-the-broken-one" in follower.line_with("after-the-broken-one")
    code, unread, stderr = follower.interrupt()
    assert (code, unread) == (0, [])
    assert stderr.startswith(f"obsml tail: cannot read {followed}: ".encode()) and stderr.count(b"\n") == 1


def test_tail_prints_requests_of_gunicorn_workers(tmp_path: Path, follow: Any) -> None:
    store = tmp_path / "store"
    env = {"OBSML_MODEL": "flask_model", "OBSML_VERSION": "3"}
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "2", env=env) as server:
        follower = follow("tail", "--store", str(store), "--errors")
        httpx.post(f"{server.url}/echo", content=b"fine", headers={"x-correlation-id": "gunicorn-fine"})
        httpx.get(f"{server.url}/fail/before", headers={"x-correlation-id": "gunicorn-fail"})
        line = follower.line_with("gunicorn-")  # the first line of either: the failure only
    assert "gunicorn-fail" in line and " 500 " in line and "GET /fail/before" in line and "flask_model/3" in line
    assert line.rstrip().endswith("ValueError: row 3: income must be a number")
    code, unread, stderr = follower.interrupt()
    assert (code, stderr) == (0, b"") and not any("gunicorn-fine" in seen for seen in unread)


def test_bodies_say_when_a_body_was_truncated(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    store = tmp_path / "store"
    with running_server(make_app(store=str(store), max_capture=1000, **ASGI)) as url:
        httpx.post(f"{url}/echo", content=b"a" * 5000, headers={"content-type": "text/plain"})
    assert obsml.flush(10)
    code, out, _ = logs(capsysbinary, "--store", str(store), "--bodies")
    assert code == 0
    request = ["  request: text/plain, 5000 bytes, truncated: 1000 bytes kept", "a" * 1000]
    assert out.decode().splitlines()[1:3] == request
    [row] = json_lines(capsysbinary, store, "--bodies")
    assert row["request_body_truncated"] is True and row["request_body"] == "a" * 1000
    assert row["request_body_size"] == 5000


def stamp(start: str, ms: float) -> str:
    """The time column of a line ``ms`` after ``start`` (an ISO time): UTC, to the millisecond."""
    moment = datetime.fromisoformat(start) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture
def timeline_store(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Two requests under uvicorn, each with what its scoring code logged and called (as issue 18 writes it)."""
    store = tmp_path / "store"
    with running_server(make_app(store=str(store), **ASGI)) as url, httpx.Client(base_url=url) as client:
        for correlation_id in ("LOAN-7", "LOAN-8"):
            client.post("/echo", content=b'{"rows": 3}', headers={"x-correlation-id": correlation_id})
    assert obsml.flush(10)
    requests = {span["attributes"]["obsml.correlation_id"]: span for span in read_spans(store)}
    write_calls(store, requests["LOAN-7"], [
        Call(3, 2, "GET", "http://features.local:8081/rows/7", status=200),
        Call(6, 1.5, "POST", "http://model-b.local:9000/score", status=503),
        Call(8, 1, "POST", "http://model-b.local:9000/score", raised=raised(ConnectionRefusedError(111, "refused"))),
    ])  # fmt: skip
    write_lines(store, requests["LOAN-7"], [
        Line(1, "INFO", "scoring", "scoring 3 rows"),
        Line(4, "INFO", "stdout", {"input": [1, 2, 3]}),
        Line(9, "ERROR", "scoring", "feature store down\nretrying", raised=raised(ValueError("no features for 7"))),
    ])  # fmt: skip
    write_calls(store, requests["LOAN-8"], [Call(1, 1, "GET", "http://features.local:8081/rows/8", status=200)])
    write_lines(store, requests["LOAN-8"], [Line(1, "INFO", "scoring", "the other request")])
    return store, requests


def test_correlation_id_shows_the_request_then_its_log_lines_and_calls_in_time_order(
    timeline_store: tuple[Path, dict[str, dict[str, Any]]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    store, requests = timeline_store
    start = requests["LOAN-7"]["start_time"]
    code, out, err = logs(capsysbinary, "--store", str(store), "--correlation-id", "LOAN-7")
    assert code == 0 and err == b""
    request, *entries = out.decode().splitlines()
    assert request.startswith(stamp(start, 0) + "  200 ") and "POST /echo" in request and "LOAN-7" in request
    assert entries == [
        f"{stamp(start, 1)}  INFO              scoring: scoring 3 rows",
        f"{stamp(start, 3)}  200      2.0ms    → GET http://features.local:8081/rows/7",
        f'{stamp(start, 4)}  INFO              stdout: {{"input":[1,2,3]}}',
        f"{stamp(start, 6)}  503      1.5ms    → POST http://model-b.local:9000/score  ERROR",
        f"{stamp(start, 8)}  ---      1.0ms    → POST http://model-b.local:9000/score  "
        "ConnectionRefusedError: [Errno 111] refused",
        f"{stamp(start, 9)}  ERROR             scoring: feature store down\\x0aretrying  ValueError: no features for 7",
    ]
    # Without --correlation-id: one line per request, the calls are not requests.
    code, out, _ = logs(capsysbinary, "--store", str(store))
    assert code == 0 and [line.split()[-1] for line in out.decode().splitlines()] == ["LOAN-8", "LOAN-7"]


def test_correlation_id_in_json_gives_each_entry_after_its_request_with_its_view_columns(
    timeline_store: tuple[Path, dict[str, dict[str, Any]]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    store, _ = timeline_store
    request, *entries = json_lines(capsysbinary, store, "--correlation-id", "LOAN-7")
    assert (request["record"], request["correlation_id"]) == ("request", "LOAN-7")
    assert [entry["record"] for entry in entries] == ["log", "dependency", "log", "dependency", "dependency", "log"]
    assert entries[2]["body"] == {"input": [1, 2, 3]} and entries[0]["body"] == "scoring 3 rows"
    assert entries[5]["exception_stacktrace"].rstrip().endswith("ValueError: no features for 7")
    assert entries[5]["message"] == "feature store down\nretrying"
    for entry in entries:
        parent = entry["span_id"] if entry["record"] == "log" else entry["parent_span_id"]
        assert (entry["trace_id"], parent) == (request["trace_id"], request["span_id"])
    assert entries[4]["error_type"] == "ConnectionRefusedError" and entries[4]["status_code"] is None
    assert datetime.fromisoformat(entries[1]["start_time"]) < datetime.fromisoformat(entries[2]["time"])
    other, *entries = json_lines(capsysbinary, store, "--correlation-id", "LOAN-8")
    assert other["correlation_id"] == "LOAN-8"
    assert {entry.get("message") or entry.get("url") for entry in entries} == {
        "the other request", "http://features.local:8081/rows/8"}


def test_on_a_terminal_the_timeline_is_cut_to_its_width_too(
    timeline_store: tuple[Path, dict[str, dict[str, Any]]]
) -> None:
    store, _ = timeline_store
    lines, stderr = on_a_terminal(100, "--store", str(store), "--correlation-id", "LOAN-7")
    assert stderr == b"" and len(lines) == 7 and max(map(len, lines)) == 100
    assert lines[5].endswith("…") and "→ POST http://model-b.local:9000/score" in lines[5]
    assert lines[1].endswith("scoring: scoring 3 rows")  # short enough: whole
