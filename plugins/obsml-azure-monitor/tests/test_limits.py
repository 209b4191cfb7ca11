"""The lengths Application Insights would cut, handled on spans and log records directly (no server)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import obsml
import pytest
from opentelemetry._logs import LogRecord
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from obsml_azure_monitor._limits import (
    CUT_ATTRIBUTE,
    KEYS_ATTRIBUTE,
    URL_ATTRIBUTE,
    Limits,
    fits,
    head,
    short_key,
    units,
)

TRACE, SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def store_in(root: Path) -> obsml.ObjectStore:
    """obsml's own local store, as obsml hands it to the exporter's factory."""
    from obsml._store import Store

    return Store(obsml.Settings.load(store=str(root)))


class RefusingStore:
    """A store that refuses every object, as a read-only or full disk does."""

    def write_atomic(self, relative: str, data: bytes) -> None:
        raise OSError("read-only file system")

    def uri(self, relative: str) -> str:
        raise AssertionError("never asked")

    def offload(self, folder: str, name: str, data: bytes, *, time_ns: int) -> Any:
        raise OSError("read-only file system")


def make_span(attributes: dict[str, Any], events: tuple[Event, ...] = (), name: str = "POST /score") -> ReadableSpan:
    start = time.time_ns()
    return ReadableSpan(
        name, SpanContext(TRACE, SPAN, False, TraceFlags(1)), None, Resource({"service.name": "other"}),
        attributes, events, kind=SpanKind.SERVER, start_time=start, end_time=start + 1_000_000,
    )


def read(uri: str) -> bytes:
    return Path(uri.removeprefix("file://")).read_bytes()


def test_the_limits_are_the_exporters() -> None:
    # The numbers, read from the installed exporter's own code paths.
    from azure.monitor.opentelemetry.exporter._utils import _filter_custom_properties

    sent = _filter_custom_properties({"k": "v" * 10_000, "x" * 150: "kept", "y" * 151: "dropped"})
    assert len(sent["k"]) == 8192
    assert "x" * 150 in sent and "y" * 151 not in sent


def test_utf16_lengths() -> None:
    assert units("a😀") == 3
    assert fits("😀" * 4096, 8192) and not fits("😀" * 4097, 8192)
    assert units(head("😀" * 10, 5)) == 4


def test_a_long_property_is_referenced_and_its_key_listed(tmp_path: Path) -> None:
    value = "é" * 9000
    span = make_span({"obsml.note": value, "obsml.small": "s", "http.request.header.x": ("v" * 9000,)})
    out = Limits(store_in(tmp_path), "credit").span(span)
    attributes = dict(out.attributes or {})
    assert attributes["obsml.small"] == "s"
    assert units(attributes["obsml.note"]) <= 8192
    assert attributes["obsml.note"].startswith("é" * 7000)
    whole = read(attributes["obsml.note.uri"])
    assert whole.decode() == value
    assert attributes["obsml.note.sha256"] == hashlib.sha256(whole).hexdigest()
    assert attributes["obsml.note.size"] == len(whole)
    assert json.loads(attributes[CUT_ATTRIBUTE]) == ["obsml.note"]
    assert attributes["http.request.header.x"] == ("v" * 9000,)  # a field, never a custom dimension
    assert dict(span.attributes or {})["obsml.note"] == value  # the original span is untouched
    assert out.resource.attributes["service.name"] == "credit"
    day = time.strftime("%Y/%m/%d", time.gmtime())
    assert attributes["obsml.note.uri"].endswith(f"/azure_monitor/{day}/{TRACE:032x}-{SPAN:016x}-obsml.note.txt")


def test_a_long_key_is_shortened_and_mapped_back(tmp_path: Path) -> None:
    key = "obsml." + "k" * 200
    span = make_span({key: "v", "obsml.list": ["a" * 5000] * 2})
    out = dict(Limits(store_in(tmp_path), "credit").span(span).attributes or {})
    short = short_key(key)
    assert len(short) <= 150 and out[short] == "v"
    assert json.loads(out[KEYS_ATTRIBUTE]) == {short: key}
    assert short_key(key) == short  # deterministic
    assert json.loads(read(out["obsml.list.uri"])) == ["a" * 5000] * 2
    assert max(len(k) for k in out) <= 150


def test_a_base64_body_is_stored_as_its_bytes(tmp_path: Path) -> None:
    body = bytes(range(256)) * 40
    encoded = base64.b64encode(body).decode()
    span = make_span({
        "obsml.request.body": encoded, "obsml.request.body.encoding": "base64",
        "obsml.request.body.size": len(body), "obsml.request.body.sha256": hashlib.sha256(body).hexdigest(),
    })
    out = dict(Limits(store_in(tmp_path), "credit").span(span).attributes or {})
    assert read(out["obsml.request.body.uri"]) == body
    assert out["obsml.request.body.uri"].endswith(".bin")
    assert out["obsml.request.body.sha256"] == hashlib.sha256(body).hexdigest()
    assert out["obsml.request.body"].startswith(encoded[:7000])


def test_a_long_url_is_kept_whole_in_a_dimension(tmp_path: Path) -> None:
    query = "q=" + "x" * 3000
    span = make_span({"http.request.method": "GET", "url.scheme": "http", "server.address": "h", "server.port": 80,
                      "url.path": "/score", "url.query": query, "http.route": "/score"})
    out = dict(Limits(store_in(tmp_path), "credit").span(span).attributes or {})
    assert out[URL_ATTRIBUTE] == f"http://h:80/score?{query}"
    assert json.loads(out[CUT_ATTRIBUTE]) == ["url"]


def test_an_exception_event_gets_the_requests_ids_and_its_long_message_referenced(tmp_path: Path) -> None:
    message = "m" * 40_000
    event = Event("exception", {"exception.type": "ValueError", "exception.message": message,
                                "exception.stacktrace": "short", "exception.escaped": "True"}, 5)
    span = make_span({"obsml.correlation_id": "c1", "obsml.model.version": "10"}, (event,))
    (out,) = Limits(store_in(tmp_path), "credit").span(span).events
    attributes = dict(out.attributes or {})
    assert attributes["obsml.correlation_id"] == "c1" and attributes["obsml.model.version"] == "10"
    assert len(attributes["exception.message"]) <= 32768
    assert read(attributes["obsml.exception.message.uri"]).decode() == message
    assert attributes["exception.stacktrace"] == "short"
    assert json.loads(attributes[CUT_ATTRIBUTE]) == ["exception.message"]


def test_when_the_store_refuses_the_value_is_still_cut_and_marked(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    out = dict(Limits(RefusingStore(), "credit").span(make_span({"obsml.note": "n" * 9000}))
               .attributes or {})
    assert out["obsml.note"].endswith("the store refused the whole value]")
    assert "obsml.note.uri" not in out
    assert json.loads(out[CUT_ATTRIBUTE]) == ["obsml.note"]


def test_a_log_record_within_limits_is_passed_as_it_is(tmp_path: Path) -> None:
    limits = Limits(store_in(tmp_path), "credit")
    record = ReadableLogRecord(LogRecord(body="short", attributes={"a": "b"}), Resource({}))
    assert limits.log(record) is record
    long_record = ReadableLogRecord(LogRecord(body="b" * 40_000, attributes={"input": "i" * 9000}), Resource({}))
    out = limits.log(long_record)
    attributes = dict(out.log_record.attributes or {})
    assert isinstance(out.log_record.body, str) and len(out.log_record.body) <= 32768
    assert read(attributes["obsml.message.uri"]) == b"b" * 40_000
    assert read(attributes["input.uri"]) == b"i" * 9000
    assert set(json.loads(attributes[CUT_ATTRIBUTE])) == {"message", "input"}
    assert long_record.log_record.body == "b" * 40_000


def test_sampled_requests_carry_their_sample_rate_and_failures_do_not(tmp_path: Path) -> None:
    from opentelemetry.trace import Status, StatusCode

    limits = Limits(store_in(tmp_path), "credit", sample_rate=0.25)
    ok = make_span({"obsml.correlation_id": "a"})
    assert dict(limits.span(ok).attributes or {})["_MS.sampleRate"] == 25.0
    failed = ReadableSpan("POST /score", SpanContext(TRACE, SPAN, False, TraceFlags(1)), attributes={"a": "b"},
                          kind=SpanKind.SERVER, status=Status(StatusCode.ERROR), start_time=1, end_time=2)
    assert "_MS.sampleRate" not in dict(limits.span(failed).attributes or {})
    assert "_MS.sampleRate" not in dict(Limits(store_in(tmp_path), "credit").span(ok).attributes or {})
