"""A body past the inline limit on its way to ``payloads/`` (obsml/_payloads.py), driven in process.

In process, so that each body arrives in exactly the chunks given: as one chunk (carried to the
writer with its span), or in many, whose last one crosses or ends the body (streamed in slabs).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from conftest import body_bytes, read_spans, span_by_correlation_id
from test_writer import stalled_writer

import obsml
from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware
from obsml._payloads import SLAB_BYTES

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}
INLINE = 1000


def chunked(data: bytes, *sizes: int) -> list[bytes]:
    """``data`` cut into chunks of these sizes, the rest as the last one."""
    chunks, start = [], 0
    for size in sizes:
        chunks.append(data[start : start + size])
        start += size
    return [*chunks, data[start:]]


def random_bytes(size: int) -> bytes:
    return hashlib.shake_256(str(size).encode()).digest(size)  # not all alike: a shifted copy shows


def serve_asgi(middleware: ObsmlMiddleware, chunks: list[bytes], correlation_id: str) -> None:
    """One POST whose request body arrives in ``chunks`` (the app answers with the same chunks)."""
    messages = iter(chunks)

    async def receive() -> dict[str, Any]:
        body = next(messages)
        return {"type": "http.request", "body": body, "more_body": body is not chunks[-1]}

    async def send(message: Any) -> None:
        return None

    scope = {
        "type": "http", "method": "POST", "path": "/score",
        "headers": [(b"x-correlation-id", correlation_id.encode()), (b"content-type", b"text/plain")],
    }
    asyncio.run(middleware(scope, receive, send))


def asgi_middleware(store: Path, chunks: list[bytes], **options: Any) -> ObsmlMiddleware:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})

    return ObsmlMiddleware(app, store=str(store), inline_limit=INLINE, **OPTIONS, **options)


def assert_stored_whole(store: Path, correlation_id: str, body: bytes) -> None:
    span = span_by_correlation_id(store, correlation_id)
    attributes = span["attributes"]
    for direction in ("request", "response"):
        prefix = f"obsml.{direction}.body"
        assert f"{prefix}.lost" not in attributes
        assert attributes[f"{prefix}.size"] == len(body)
        assert attributes[f"{prefix}.truncated"] is False
        assert attributes[f"{prefix}.sha256"] == hashlib.sha256(body).hexdigest()
        assert f"{prefix}.uri" in attributes
        assert body_bytes(span, direction) == body


BODY = random_bytes(3 * SLAB_BYTES + 123)
SHAPES = [
    pytest.param([BODY], id="one-chunk"),
    pytest.param(chunked(BODY, 10, 300, 600), id="small-chunks-then-one-that-crosses-and-ends-it"),
    pytest.param(chunked(BODY, 999, 1), id="the-last-chunk-starts-just-past-the-limit"),
    pytest.param(chunked(BODY, 500, 700), id="the-crossing-chunk-then-one-more"),
    pytest.param(chunked(BODY, 500, 700, 70_000, 5, 1000), id="the-crossing-chunk-then-many"),
    pytest.param(chunked(BODY[: 2 * SLAB_BYTES], 1000, SLAB_BYTES - 1000), id="ending-on-a-slab-boundary"),
    pytest.param(chunked(BODY, *[4096] * 48), id="many-small-chunks"),
]


@pytest.mark.parametrize("chunks", SHAPES)
def test_an_offloaded_body_is_stored_byte_exact_whatever_its_chunks(store: Path, chunks: list[bytes]) -> None:
    middleware = asgi_middleware(store, chunks)
    serve_asgi(middleware, chunks, "shape-1")
    assert_stored_whole(store, "shape-1", b"".join(chunks))
    assert obsml.stats()["dropped"] == {}


@pytest.mark.parametrize("chunks", SHAPES)
def test_a_wsgi_body_read_into_the_apps_buffer_is_stored_byte_exact(store: Path, chunks: list[bytes]) -> None:
    """readinto (werkzeug's) hands over a view of a buffer reused after the call: copied, never carried."""
    body = b"".join(chunks)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        stream, buffer, parts = environ["wsgi.input"], bytearray(len(chunks[0]) or 1), []
        while size := stream.readinto(buffer):
            parts.append(bytes(buffer[:size]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks

    middleware = ObsmlWSGIMiddleware(app, store=str(store), inline_limit=INLINE, **OPTIONS)
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/score", "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "text/plain", "HTTP_X_CORRELATION_ID": "wsgi-shape", "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
    }
    result = middleware(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(result) == body
    result.close()  # type: ignore[attr-defined]
    assert_stored_whole(store, "wsgi-shape", body)


def test_a_body_carried_with_its_span_that_the_queue_cannot_take_is_lost_as_before(store: Path) -> None:
    body = random_bytes(5000)
    middleware = asgi_middleware(store, [body], queue_max_bytes=3000)
    with stalled_writer(store=str(store), inline_limit=INLINE, queue_max_bytes=3000, **OPTIONS):
        serve_asgi(middleware, [body], "lost-1")
    attributes = span_by_correlation_id(store, "lost-1")["attributes"]
    assert attributes["obsml.request.body.lost"] == attributes["obsml.response.body.lost"] == "queue_full"
    assert attributes["obsml.request.body.size"] == 5000
    assert obsml.stats()["dropped"] == {"queue_full": {"payload": 2}}
    assert [p for p in store.rglob("*") if p.is_file() and "traces" not in p.parts] == []


def test_a_body_over_the_queue_bound_in_one_chunk_still_goes_in_alone_with_its_span_after_it(store: Path) -> None:
    body = random_bytes(40_000)
    middleware = asgi_middleware(store, [body], queue_max_bytes=30_000)
    with stalled_writer(nbytes=0, store=str(store), inline_limit=INLINE, queue_max_bytes=30_000, **OPTIONS):
        serve_asgi(middleware, [body], "alone-1")
    span = span_by_correlation_id(store, "alone-1")
    # The request's body went in alone (the queue was empty); the response's found it full.
    assert body_bytes(span, "request") == body
    assert span["attributes"]["obsml.response.body.lost"] == "queue_full"
    assert obsml.stats()["dropped"] == {"queue_full": {"payload": 1}}


@pytest.mark.parametrize(
    "chunks", [pytest.param([BODY], id="carried"), pytest.param(chunked(BODY, 500, 700), id="streamed")]
)
def test_a_dropped_span_leaves_no_payload_file_behind(store: Path, chunks: list[bytes]) -> None:
    middleware = asgi_middleware(store, chunks, queue_max_items=4)
    with stalled_writer(store=str(store), inline_limit=INLINE, queue_max_items=4, **OPTIONS):
        for n in range(6):
            serve_asgi(middleware, chunks, f"dropped-{n}")
    assert obsml.flush(10)
    dropped = obsml.stats()["dropped"]["queue_full"]["span"]
    assert dropped >= 3
    spans = read_spans(store)
    assert len(spans) == 6 - dropped
    for span in spans:  # what was kept is whole
        for direction in ("request", "response"):
            if f"obsml.{direction}.body.uri" in span["attributes"]:
                assert body_bytes(span, direction) == BODY
    assert not list(store.rglob(".*.tmp"))  # every payload file opened for a dropped span was discarded
