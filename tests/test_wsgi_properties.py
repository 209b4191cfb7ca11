"""Under gunicorn, the client sees exactly the same response with and without obsml, and obsml keeps the bytes."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import body_bytes, running_gunicorn, span_by_correlation_id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IGNORED_HEADERS = {"date", "x-correlation-id"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    store = tmp_path_factory.mktemp("wsgi-property") / "store"
    env = {"OBSML_INLINE_LIMIT": "4096", "OBSML_SERVICE": "prop"}
    with running_gunicorn("wsgi_apps:echo_app", store.with_name("bare")) as bare, running_gunicorn(
        "wsgi_apps:plain_app", store, env=env
    ) as wrapped:
        yield bare.url, wrapped.url, store


bodies = st.one_of(
    st.binary(max_size=10_000),
    st.text(max_size=3000).map(str.encode),
    st.sampled_from([b"", b"\xff\xfe\x00", b"x" * 4096, b"x" * 4097]),
)
_ids = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, status=st.sampled_from([200, 201, 400, 404, 500, 503]), pieces=st.integers(1, 5),
       content_type=st.sampled_from(["application/json", "text/plain; charset=utf-8", "application/octet-stream"]))
def test_responses_are_byte_identical_and_the_capture_is_exact(
    servers: tuple[str, str, Path], body: bytes, status: int, pieces: int, content_type: str
) -> None:
    bare_url, obsml_url, store = servers
    correlation_id = f"wsgi-prop-{next(_ids)}"
    headers = {"x-status": str(status), "x-pieces": str(pieces), "content-type": content_type,
               "x-correlation-id": correlation_id}
    bare = httpx.post(bare_url, content=body, headers=headers)
    wrapped = httpx.post(obsml_url, content=body, headers=headers)
    assert (wrapped.status_code, wrapped.reason_phrase, wrapped.content) == (
        bare.status_code, bare.reason_phrase, bare.content) == (status, "Whatever", body)
    assert [h for h in wrapped.headers.multi_items() if h[0] not in IGNORED_HEADERS] == [
        h for h in bare.headers.multi_items() if h[0] not in IGNORED_HEADERS
    ]
    assert wrapped.headers["x-correlation-id"] == correlation_id
    span = span_by_correlation_id(store, correlation_id)
    for direction in ("request", "response"):
        assert body_bytes(span, direction) == body
        assert span["attributes"][f"obsml.{direction}.body.sha256"] == hashlib.sha256(body).hexdigest()
    assert span["attributes"]["http.response.status_code"] == status
    assert (span["status"]["code"] == "ERROR") is (status >= 500)
