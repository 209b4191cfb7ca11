"""The client sees exactly the same response with and without obsml, and obsml keeps exactly the bytes."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import body_bytes, running_server, span_by_correlation_id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obsml import ObsmlMiddleware

IGNORED_HEADERS = {"date", "x-correlation-id"}


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the body in the chunks the client asks for, with the status it asks for."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    pieces = int(headers.get(b"x-pieces", b"1"))
    await send({"type": "http.response.start", "status": int(headers.get(b"x-status", b"200")),
                "headers": [(b"content-type", headers.get(b"content-type", b"application/octet-stream"))]})
    step = max(1, -(-len(body) // pieces))
    for start in range(0, max(len(body), 1), step):
        await send({"type": "http.response.body", "body": body[start:start + step], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    store = tmp_path_factory.mktemp("property") / "store"
    wrapped = ObsmlMiddleware(echo_app, store=str(store), inline_limit=4096, service="prop")
    with running_server(echo_app, lifespan="off") as bare_url, running_server(wrapped, lifespan="off") as obsml_url:
        yield bare_url, obsml_url, store


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
    correlation_id = f"prop-{next(_ids)}"
    headers = {"x-status": str(status), "x-pieces": str(pieces), "content-type": content_type,
               "x-correlation-id": correlation_id}
    bare = httpx.post(bare_url, content=body, headers=headers)
    wrapped = httpx.post(obsml_url, content=body, headers=headers)
    assert (wrapped.status_code, wrapped.content) == (bare.status_code, bare.content) == (status, body)
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
