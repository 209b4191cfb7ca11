"""Capture policies (obsml/_policy.py): skipped routes leave no span, and bodies are kept only
where and when ``OBSML_CAPTURE_BODIES`` and ``OBSML_CAPTURE_ROUTES`` say, under real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import make_app, pattern
from conftest import body_bytes, read_spans, running_gunicorn, running_server, span_by_correlation_id

import obsml
from obsml import ConfigError, Settings
from obsml._pipeline import Capturer
from obsml.asgi import describe_scope

BIG = 100_000  # over the inline limit: offloaded to payloads/ while the request runs


def payload_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "payloads").rglob("*") if p.is_file()) if (store / "payloads").exists() else []


def test_skipped_routes_leave_no_span_by_path_or_by_route_template_even_when_they_fail(store: Path) -> None:
    app = make_app(store=str(store), skip_routes="/whoami, /status/{code}", flush_interval=0.1)
    with running_server(app) as url:
        health = httpx.get(f"{url}/whoami")
        failed = httpx.get(f"{url}/status/503")
        kept = httpx.post(f"{url}/echo", content=b"kept", headers={"x-correlation-id": "kept-1"})
    # Skipped by its path before the app ran: obsml was not there at all.
    assert health.json() is None and "x-correlation-id" not in health.headers
    assert failed.status_code == 503
    assert span_by_correlation_id(store, "kept-1")["attributes"]["obsml.request.body"] == "kept"
    assert [s["attributes"]["url.path"] for s in read_spans(store)] == ["/echo"]
    assert obsml.stats()["requests_skipped"] == 2
    assert kept.content == b"kept"


@pytest.mark.parametrize("size", [pytest.param(10, id="inline"), pytest.param(BIG, id="offloaded")])
def test_errors_keeps_the_bodies_of_failed_requests_only(store: Path, size: int) -> None:
    body = pattern(size)
    with running_server(make_app(store=str(store), capture_bodies="errors", flush_interval=0.1)) as url:
        ok = httpx.post(f"{url}/echo", content=body, headers={"x-correlation-id": "ok-1"})
        httpx.post(f"{url}/fail/after-read", content=body, headers={"x-correlation-id": "failed-1"})
    assert ok.content == body  # the client always gets the app's bytes
    succeeded = span_by_correlation_id(store, "ok-1")["attributes"]
    for direction in ("request", "response"):
        assert succeeded[f"obsml.{direction}.body.not_captured"] == "policy"
        assert succeeded[f"obsml.{direction}.body.size"] == size
        assert f"obsml.{direction}.body" not in succeeded and f"obsml.{direction}.body.sha256" not in succeeded
        assert f"obsml.{direction}.body.uri" not in succeeded
    failed = span_by_correlation_id(store, "failed-1")
    assert failed["attributes"]["http.response.status_code"] == 500
    assert body_bytes(failed, "request") == body
    # The successful request's offloaded bodies were written while it ran, then discarded.
    assert len(payload_files(store)) == (1 if size == BIG else 0)
    assert not list(store.rglob(".*.tmp"))


def test_none_keeps_no_body_byte_but_every_span_and_size(store: Path) -> None:
    with running_server(make_app(store=str(store), capture_bodies="none", flush_interval=0.1)) as url:
        httpx.post(f"{url}/fail/after-read", content=pattern(BIG), headers={"x-correlation-id": "none-1"})
    attributes = span_by_correlation_id(store, "none-1")["attributes"]
    assert attributes["obsml.request.body.not_captured"] == "policy"
    assert attributes["obsml.request.body.size"] == BIG
    assert payload_files(store) == []


def test_capture_routes_keeps_bodies_of_matching_paths_and_route_templates_only(store: Path) -> None:
    app = make_app(store=str(store), capture_routes="/echo,/bytes/{size}", flush_interval=0.1)
    with running_server(app) as url:
        httpx.post(f"{url}/echo", content=b"scored", headers={"x-correlation-id": "by-path"})
        httpx.get(f"{url}/bytes/{BIG}", headers={"x-correlation-id": "by-template"})
        httpx.post(f"{url}/digest", content=pattern(BIG), headers={"x-correlation-id": "elsewhere"})
    assert span_by_correlation_id(store, "by-path")["attributes"]["obsml.request.body"] == "scored"
    assert body_bytes(span_by_correlation_id(store, "by-template"), "response") == pattern(BIG)
    elsewhere = span_by_correlation_id(store, "elsewhere")["attributes"]
    assert elsewhere["obsml.request.body.not_captured"] == "policy"
    assert elsewhere["obsml.response.body.not_captured"] == "policy"
    assert len(payload_files(store)) == 1


def test_policies_under_gunicorn_from_the_environment(store: Path) -> None:
    env = {"OBSML_SKIP_ROUTES": "/whoami,/bytes/<int:size>", "OBSML_CAPTURE_BODIES": "errors"}
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "2", env=env) as server:
        skipped = httpx.get(f"{server.url}/whoami")
        httpx.get(f"{server.url}/bytes/10", headers={"x-correlation-id": "skipped-by-template"})
        httpx.post(f"{server.url}/echo", content=pattern(BIG), headers={"x-correlation-id": "ok-2"})
        httpx.get(f"{server.url}/fail/before", headers={"x-correlation-id": "failed-2"})
    assert skipped.json() == {} and "x-correlation-id" not in skipped.headers
    spans = {s["attributes"]["obsml.correlation_id"]: s["attributes"] for s in read_spans(store)}
    assert sorted(spans) == ["failed-2", "ok-2"]
    assert spans["ok-2"]["obsml.request.body.not_captured"] == "policy"
    assert spans["failed-2"]["http.response.status_code"] == 500
    assert payload_files(store) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"capture_bodies": "some"}, "one of all, none, errors", id="unknown-policy"),
        pytest.param({"skip_routes": "/health\x1b[2J"}, "globs over route templates", id="control-character"),
        pytest.param({"capture_bodies": "none", "capture_routes": "/predict"}, "no effect", id="contradiction"),
    ],
)
def test_a_bad_policy_fails_at_start_up(store: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Capturer(Settings.load(store=str(store), **options), describe_scope)


def test_policy_settings_read_from_the_environment_and_keywords() -> None:
    env = {"OBSML_CAPTURE_BODIES": "Errors", "OBSML_SKIP_ROUTES": "/health*, /metrics"}
    settings = Settings.load(env, capture_routes=["/predict", "/v1/*"])
    assert settings.capture_bodies == "errors"
    assert settings.skip_routes == ("/health*", "/metrics")
    assert settings.capture_routes == ("/predict", "/v1/*")
