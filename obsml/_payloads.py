"""Bodies over the inline limit on their way to ``payloads/`` in the store.

On the request path a :class:`PayloadStream` only queues chunks; everything else (the file
name, the hash, the writes) happens on the background writer, chunk jobs in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._capture import BodyTee
    from ._stats import DropReason
    from ._writer import Writer


class PayloadStream:
    """A body on its way to ``payloads/``. Chunks travel through the writer queue in order."""

    __slots__ = ("alone", "capturer", "error", "hasher", "lost", "queued", "relative", "target", "tee")

    def __init__(self, tee: BodyTee) -> None:
        self.tee = tee
        self.capturer = tee.capture.capturer
        self.lost: DropReason | None = None  # set on the request path when a chunk could not be queued
        self.queued = False  # a chunk reached the writer (which then holds a file to discard)
        self.alone = False  # a chunk over the queue's bound for bodies went in alone (its span must follow)
        # The rest belongs to the writer thread, which fills it in at the first chunk.
        self.relative: str | None = None
        self.error: DropReason | None = None  # the store refused a write
        self.target: Any = None
        self.hasher: Any = None

    def send(self, data: bytes) -> None:
        if self.lost is not None:
            return
        writer = self.capturer.pipeline.writer
        bound = self.capturer.queue_body_bytes
        if writer.submit(_Chunk(self, data), max_bytes=bound):
            self.queued = True
            if len(data) > bound:
                self.alone = True
        else:
            self.lost = writer.refusal


class _Chunk:
    __slots__ = ("data", "nbytes", "stream")

    def __init__(self, stream: PayloadStream, data: bytes) -> None:
        self.stream = stream
        self.data = data
        self.nbytes = len(data)

    def run(self) -> None:
        self.stream.capturer.pipeline.write_chunk(self.stream, self.data)


def abort_stream(writer: Writer, stream: PayloadStream) -> None:
    """Tell the writer to discard a stream whose span was dropped (forced: it is tiny)."""
    writer.submit(_Abort(stream), force=True)


class _Abort:
    __slots__ = ("stream",)
    nbytes = 0

    def __init__(self, stream: PayloadStream) -> None:
        self.stream = stream

    def run(self) -> None:
        self.stream.capturer.pipeline.finish_stream(self.stream, commit=False)


_EXTENSIONS = {
    "application/json": "json",
    "application/x-ndjson": "jsonl",
    "application/octet-stream": "bin",
    "application/x-www-form-urlencoded": "txt",
    "text/csv": "csv",
    "text/event-stream": "sse",
    "text/html": "html",
    "text/plain": "txt",
    "image/png": "png",
    "image/jpeg": "jpg",
    "application/x-parquet": "parquet",
    "application/vnd.apache.parquet": "parquet",
}


def extension_for(content_type: bytes | None) -> str:
    """A file extension from a content type; ``bin`` for anything unknown (never from raw input)."""
    if not content_type:
        return "bin"
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    if media.endswith("+json"):
        return "json"
    return _EXTENSIONS.get(media, "bin")
