"""Body redaction under real servers (issue 15): canaries never reach the store, the client gets them.

Each request carries canary values in nested JSON fields, form fields, JSON lines, the query
string and text matched by a pattern; bodies are inline (1 KB) or offloaded (65 KB, 5 MB).
Afterwards every byte of the store and of the spool directory is searched for the canaries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from apps import make_app
from conftest import body_bytes, install_plugin, running_gunicorn, running_server, span_by_correlation_id

import obsml
from obsml import Collector, ConfigError, ObsmlMiddleware
from obsml._secrets import REDACTED

CARD_PATTERN = r"\b(?:\d{4}[ -]?){3}\d{4}\b"
CANARIES = {
    "ssn": "CANARY-ssn-7f3a",
    "password": "CANARY-password-91c2",
    "card": "CANARY-card-0b8e",
    "number": "4111-1111-1111-1234",  # found by the pattern only
    "form": "CANARY-form-5d61",
    "line": "CANARY-jsonl-c4e0",
    "query": "CANARY-query-2a9f",
}
OPTIONS = {"redact_fields": "applicant.ssn,items.*.card", "redact_patterns": CARD_PATTERN}
ENV = {"OBSML_REDACT_FIELDS": OPTIONS["redact_fields"], "OBSML_REDACT_PATTERNS": CARD_PATTERN}


def json_body(size: int) -> bytes:
    document = {
        "applicant": {"name": "Ann", "ssn": CANARIES["ssn"], "contact": {"Account-Password": CANARIES["password"]}},
        "items": [{"sku": "a1", "card": CANARIES["card"]}, {"sku": "b2"}],
        "notes": f"pay with {CANARIES['number']} please",
        "padding": "",
    }
    document["padding"] = "x" * max(0, size - len(json.dumps(document)))
    return json.dumps(document).encode()


def form_body(size: int) -> bytes:
    body = f"user=ann&password={CANARIES['form']}&note=card+{CANARIES['number']}&pad="
    return (body + "y" * max(0, size - len(body))).encode()


def json_lines_body(size: int) -> bytes:
    lines = [json.dumps({"row": 0, "features": {"token": CANARIES["line"], "age": 41}})]
    total = len(lines[0]) + 1
    while total < size:
        lines.append(json.dumps({"row": len(lines), "features": {"age": 40, "pad": "z" * 200}}))
        total += len(lines[-1]) + 1
    return ("\n".join(lines) + "\n").encode()


BOUNDARY = "obsml-test-7d2f"


def multipart_body(size: int) -> bytes:
    """A form upload (RFC 7578): two secret fields, and a file whose bytes are kept as sent."""
    def part(name: str, value: bytes, file: str = "") -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{file}"' if file else "")
        return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"

    head = part("user", b"ann") + part("password", CANARIES["form"].encode())
    head += part("note", f"card {CANARIES['number']}".encode())
    tail = f"--{BOUNDARY}--\r\n".encode()
    return head + part("scan", b"\x89PNG" + b"\xff" * max(0, size - len(head) - 200), "scan.png") + tail


BODIES = {
    "json": ("application/json", json_body),
    "form": ("application/x-www-form-urlencoded", form_body),
    "jsonl": ("application/x-ndjson", json_lines_body),
    "multipart": (f"multipart/form-data; boundary={BOUNDARY}", multipart_body),
}
EXPECTED_PATHS = {
    "json": {"applicant.ssn", "applicant.contact.Account-Password", "items.0.card", "notes"},
    "form": {"password", "note"},
    "jsonl": {"0.features.token"},
    "multipart": {"password", "note"},
}


def files_holding(directories: list[Path], secrets: list[str]) -> list[str]:
    """Every file under ``directories`` holding one of ``secrets``, read byte by byte."""
    needles = [s.encode() for s in secrets]
    found = []
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


def spool_dir() -> Path:
    return Path(os.environ["OBSML_SPOOL_DIR"])


def send_all(url: str, size: int) -> None:
    """Every kind of body to /echo with a canary in the query too; the client gets each unchanged."""
    for kind, (media, make) in BODIES.items():
        body = make(size)
        response = httpx.post(
            f"{url}/echo?password={CANARIES['query']}&tokens=3",
            content=body,
            headers={"content-type": media, "x-correlation-id": f"{kind}-{size}"},
            timeout=60,
        )
        assert response.status_code == 200
        assert response.content == body  # the client always receives the app's bytes


def check_spans(store: Path, size: int, *, inline: bool) -> None:
    for kind in BODIES:
        attributes = span_by_correlation_id(store, f"{kind}-{size}")["attributes"]
        assert attributes["url.query"] == f"password={REDACTED}&tokens=3"
        for direction in ("request", "response"):
            prefix = f"obsml.{direction}.body"
            assert (f"{prefix}.uri" in attributes) is not inline
            assert attributes[f"{prefix}.redacted"] == len(EXPECTED_PATHS[kind])
            assert set(attributes[f"{prefix}.redacted_paths"]) == EXPECTED_PATHS[kind]
            stored = body_bytes({"attributes": attributes}, direction)
            assert attributes[f"{prefix}.size"] == len(stored)
            assert REDACTED.encode() in stored
            assert not [c for c in CANARIES.values() if c.encode() in stored]  # also inside base64


@pytest.mark.parametrize("size", [1024, 65 * 1024, 5 * 1024 * 1024], ids=["1KB-inline", "65KB", "5MB"])
def test_canaries_reach_the_client_unchanged_and_never_the_store_under_uvicorn(store: Path, size: int) -> None:
    with running_server(make_app(store=str(store), **OPTIONS)) as url:
        send_all(url, size)
        check_spans(store, size, inline=size < 65536)
    assert files_holding([store, spool_dir()], list(CANARIES.values())) == []


@pytest.mark.parametrize("size", [1024, 65 * 1024, 5 * 1024 * 1024], ids=["1KB-inline", "65KB", "5MB"])
def test_canaries_reach_the_client_unchanged_and_never_the_store_under_gunicorn(tmp_path: Path, size: int) -> None:
    store = tmp_path / "store"
    with running_gunicorn("wsgi_apps:plain_app", store, "--workers", "2", env=ENV) as server:
        send_all(server.url, size)
        server.stop()
        log = server.log()
    check_spans(store, size, inline=size < 65536)
    assert files_holding([store, spool_dir()], list(CANARIES.values())) == []
    assert [c for c in CANARIES.values() if c in log] == []  # nor in what the workers logged


def test_a_worker_killed_during_a_large_redacted_upload_leaves_no_canary_under_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    body = json_body(5 * 1024 * 1024)
    with running_gunicorn("wsgi_apps:plain_app", store, "--workers", "1", env=ENV) as server:
        for sent_before_kill in (len(body) // 2, len(body)):  # mid-upload, then while it is being redacted
            httpx.post(f"{server.url}/echo", content=b"{}", timeout=30)  # the worker is up and serving
            [worker] = psutil.Process(server.process.pid).children()
            with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as connection:
                connection.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                connection.sendall(body[:sent_before_kill])
                time.sleep(0.2)  # not a timing assertion: lets the worker's writer take some chunks
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(10)
            while worker.pid in (p.pid for p in psutil.Process(server.process.pid).children()):
                time.sleep(0.05)  # until the master has reaped it (then the next request forks a new one)
        assert files_holding([store, spool_dir()], list(CANARIES.values())) == []
        server.stop()
    assert files_holding([store, spool_dir()], list(CANARIES.values())) == []


def raising_hook(document: Any, *, direction: str, content_type: str | None) -> Any:
    raise RuntimeError(f"the hook failed on {CANARIES['password']}")


def test_a_hook_that_raises_drops_the_body_as_unredactable_and_never_breaks_the_request(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="obsml")
    with running_server(make_app(store=str(store), redact=raising_hook)) as url:
        for size in (100, 70_000):
            body = json_body(size)
            response = httpx.post(f"{url}/echo", content=body, headers={
                "content-type": "application/json", "x-correlation-id": f"hook-{size}"})
            assert (response.status_code, response.content) == (200, body)
            attributes = span_by_correlation_id(store, f"hook-{size}")["attributes"]
            for direction in ("request", "response"):
                assert attributes[f"obsml.{direction}.body.lost"] == "unredactable"
                assert attributes[f"obsml.{direction}.body.content_type"] == "application/json"
                assert attributes[f"obsml.{direction}.body.size"] == len(body)
    assert obsml.stats()["dropped"]["unredactable"] == {"payload": 4}  # type: ignore[index]
    assert files_holding([store, spool_dir()], list(CANARIES.values())) == []
    # The log names the hook and the exception's type, never its message (it may quote the body).
    assert "the redact hook test_redact_bodies.raising_hook raised RuntimeError" in caplog.text
    assert "CANARY" not in caplog.text


def test_a_hook_from_an_entry_point_gets_the_parsed_document_and_its_result_is_stored(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site").mkdir()
    install_plugin(tmp_path / "site", monkeypatch, "names", """
        def hide_names(document, *, direction, content_type):
            document["applicant"]["name"] = "[HIDDEN]"
            return document
    """, group="obsml.redactors", factory="hide_names")
    with running_server(make_app(store=str(store), redactors="names", redact_fields="none")) as url:
        body = json_body(100)
        httpx.post(f"{url}/echo", content=body, headers={"content-type": "application/json", "x-correlation-id": "ep"})
        attributes = span_by_correlation_id(store, "ep")["attributes"]
    stored = json.loads(attributes["obsml.request.body"])
    assert stored["applicant"] == {**json.loads(body)["applicant"], "name": "[HIDDEN]"}
    assert attributes["obsml.request.body.redacted"] == 0  # the hook's replacements are not counted


BROKEN = b'{"password": "' + CANARIES["password"].encode() + b'", "cut": '


@pytest.mark.parametrize("size", [len(BROKEN), 70_000], ids=["inline", "offloaded"])
def test_an_unparseable_body_is_kept_as_received_by_default_and_a_parseable_one_redacted(
    store: Path, size: int
) -> None:
    broken = BROKEN.ljust(size, b" ")
    whole = BROKEN + b'"end"}'.ljust(size - len(BROKEN), b" ")
    with running_server(make_app(store=str(store))) as url:
        for name, body in (("broken", broken), ("whole", whole)):
            httpx.post(f"{url}/echo", content=body, headers={
                "content-type": "application/json", "x-correlation-id": name})
        kept = span_by_correlation_id(store, "broken")["attributes"]
        redacted = span_by_correlation_id(store, "whole")["attributes"]
    assert "obsml.request.body.redacted" not in kept
    assert body_bytes({"attributes": kept}, "request") == broken  # keep: stored as it came
    assert redacted["obsml.request.body.redacted_paths"] == ["password"]
    assert CANARIES["password"].encode() not in body_bytes({"attributes": redacted}, "request")


@pytest.mark.parametrize("size", [len(BROKEN), 70_000], ids=["inline", "offloaded"])
def test_an_unparseable_body_is_dropped_when_asked_keeping_only_its_size_and_content_type(
    store: Path, size: int
) -> None:
    body = BROKEN.ljust(size, b" ")
    with running_server(make_app(store=str(store), redact_unparseable="drop")) as url:
        response = httpx.post(f"{url}/echo", content=body, headers={
            "content-type": "application/json", "x-correlation-id": "d"})
        assert response.content == body
        attributes = span_by_correlation_id(store, "d")["attributes"]
    body_attributes = {k.removeprefix("obsml.request.body"): v for k, v in attributes.items()
                       if k.startswith("obsml.request.body")}
    assert body_attributes == {
        ".content_type": "application/json", ".size": size, ".declared_size": size, ".truncated": False,
        ".lost": "unredactable",
    }
    assert obsml.stats()["dropped"]["unredactable"] == {"payload": 2}  # type: ignore[index]
    assert files_holding([store, spool_dir()], [CANARIES["password"]]) == []


def test_without_rules_an_offloaded_body_is_streamed_to_the_store_byte_exact(store: Path) -> None:
    body = json_body(200_000)
    with running_server(make_app(store=str(store), redact_fields="none")) as url:
        httpx.post(f"{url}/echo", content=body, headers={"content-type": "application/json", "x-correlation-id": "n"})
        attributes = span_by_correlation_id(store, "n")["attributes"]
    assert Path(attributes["obsml.request.body.uri"].removeprefix("file://")).read_bytes() == body
    assert "obsml.request.body.redacted" not in attributes


def test_a_pattern_that_re2_cannot_run_in_linear_time_fails_start_up() -> None:
    with pytest.raises(ConfigError, match=r"OBSML_REDACT_PATTERNS: '\(a\)\\\\1'.*backreferences"):
        ObsmlMiddleware(make_app(), redact_patterns=[r"(a)\1"])
    with pytest.raises(ConfigError, match="lookarounds"):
        obsml.Settings.load({"OBSML_REDACT_PATTERNS": '["ok", "(?=a)b"]'})
    patterns = obsml.Settings.load({"OBSML_REDACT_PATTERNS": r'["a,b{1,2}", "\\d+"]'}).redact_patterns
    assert patterns == ("a,b{1,2}", r"\d+")  # a JSON array: patterns hold commas
    with pytest.raises(ConfigError, match="OBSML_REDACT_UNPARSEABLE='sometimes' is not valid: expected keep or drop"):
        obsml.Settings.load({"OBSML_REDACT_UNPARSEABLE": "sometimes"})
    with pytest.raises(ConfigError, match=r"OBSML_REDACT_FIELDS='a\.\.b' is not valid"):
        obsml.Settings.load({"OBSML_REDACT_FIELDS": "a..b"})


def test_the_collector_replaces_the_values_of_feature_names_the_field_rules_name(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSML_REDACT_FIELDS", "applicant.ssn")
    collector = Collector("m", "inputs", ["age", "Api-Key", "applicant.ssn", "tokens"], store=str(store))
    collector.collect([[41, CANARIES["password"], CANARIES["ssn"], 3]])
    obsml.flush()
    [part] = (store / "modeldata").rglob("*.jsonl")
    records = [json.loads(line) for line in part.read_text().splitlines()]
    assert [(r["age"], r["Api-Key"], r["applicant.ssn"], r["tokens"]) for r in records] == [(41, REDACTED, REDACTED, 3)]


@pytest.fixture(autouse=True)
def _no_leftover_raw_files() -> Iterator[None]:
    yield
    raw = spool_dir() / "raw"
    assert not raw.exists() or list(raw.iterdir()) == []  # raw bodies never have a name


# Each hides a field the rules name from a plain byte search for the name (issue 16: a body is
# parsed only when such a search cannot rule a match out).
HIDDEN_FIELDS = {
    "separators-and-case": (b'{"User_PASS-word":"CANARY-h1"}', "User_PASS-word"),
    "suffix-after-spaces": (b'{"db . Token" :"CANARY-h2"}', "db . Token"),
    "unicode-escape": (b'{"\\u0070assword":"CANARY-h3"}', "password"),
    "kelvin-sign-apikey": ('{"api\u212aey":"CANARY-h4"}'.encode(), "api\u212aey"),
    "utf-16": ('{"secret":"CANARY-h5"}'.encode("utf-16-le"), "secret"),
    "dotted-path": (b'{"applicant":{"ssn":"CANARY-h6"}}', "applicant.ssn"),
    "jsonl-line-2": (b'{"a":1}\n{"items":[{"card":"CANARY-h7"}]}\n', "1.items.0.card"),
    # Few strings for the size: its keys are looked at one by one rather than searched in one pass.
    "after-a-long-value": (b'{"note":"' + b"x" * 4000 + b'","db-Pass_word" :"CANARY-h8"}', "db-Pass_word"),
}


@pytest.mark.parametrize("case", list(HIDDEN_FIELDS))
def test_a_field_hidden_from_a_byte_search_is_still_redacted(store: Path, case: str) -> None:
    body, path = HIDDEN_FIELDS[case]
    media = "application/x-ndjson" if case.startswith("jsonl") else "application/json"
    with running_server(make_app(store=str(store), redact_fields=OPTIONS["redact_fields"])) as url:
        response = httpx.post(f"{url}/echo", content=body, headers={"content-type": media, "x-correlation-id": case})
        assert response.content == body
        attributes = span_by_correlation_id(store, case)["attributes"]
    assert attributes["obsml.request.body.redacted_paths"] == [path]
    assert b"CANARY" not in body_bytes({"attributes": attributes}, "request")


def test_a_json_body_that_no_rule_names_is_stored_byte_exact_with_its_spacing(store: Path) -> None:
    # Near misses: a name not at the end of a key, a name in a value, a key ending in a name plus "s".
    body = b'{ "max_tokens" : 256, "author":"auth token password", "passwords_count": 2,\n "x": [1, 2.50]}'
    with running_server(make_app(store=str(store))) as url:
        httpx.post(f"{url}/echo", content=body, headers={"content-type": "application/json", "x-correlation-id": "e"})
        attributes = span_by_correlation_id(store, "e")["attributes"]
    assert body_bytes({"attributes": attributes}, "request") == body
    assert "obsml.request.body.redacted" not in attributes


def test_a_json_body_the_app_never_read_is_not_counted_as_a_dropped_payload(store: Path) -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("model not loaded")  # before reading the request body

    app = ObsmlMiddleware(failing, store=str(store), service="redact-unread")

    async def post() -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://scoring") as client:
            response = await client.post("/score", json={"card": "4111"}, headers={"x-correlation-id": "unread"})
            return response.status_code

    assert asyncio.run(post()) == 500
    assert obsml.flush(10)
    attributes = span_by_correlation_id(store, "unread")["attributes"]
    assert "obsml.request.body.lost" not in attributes
    assert "unredactable" not in obsml.stats()["dropped"]  # type: ignore[operator]


def test_a_json_body_cut_at_the_capture_limit_is_dropped_even_with_nothing_to_redact(store: Path) -> None:
    # Half a document is never parsed, so never screened as clean either: dropped as unredactable.
    app = make_app(store=str(store), service="redact-cut", max_capture=16)

    async def post() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scoring") as client:
            response = await client.post(
                "/echo", content=b'{"note":"' + b"x" * 100 + b'"}',
                headers={"content-type": "application/json", "x-correlation-id": "cut"},
            )
            return response.status_code

    assert asyncio.run(post()) == 200
    assert obsml.flush(10)
    attributes = span_by_correlation_id(store, "cut")["attributes"]
    assert attributes["obsml.request.body.lost"] == "unredactable"
    assert attributes["obsml.request.body.truncated"] is True
