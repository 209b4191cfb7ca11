"""A body's one home: its copy on the request path, and its way to ``payloads/`` in the store.

On the request path a :class:`BodyTee` keeps a body's chunks in memory up to the inline
limit; past it, a :class:`PayloadStream` only queues them. Everything else (the file name, the
hash, the writes, the commit) happens on the background writer, chunk jobs in order. The
writer finishes (commits or aborts) a stream before its span's attributes are built, so that
building them touches no file.
"""

from __future__ import annotations

import time
from hashlib import sha256
from typing import IO, TYPE_CHECKING, Any, Protocol

from ._body_redaction import redact_or_drop
from ._headers import header_value
from ._objects import failure_reason, utc_folders
from ._stats import logger, record_drop

if TYPE_CHECKING:
    from ._body_redaction import BodyRedactor, Plan, Redacted
    from ._stats import DropReason
    from ._store import Store
    from ._writer import Writer


class BodyLimits(Protocol):
    """What a body needs of its middleware (the ``Capturer``, compiled once)."""

    @property
    def inline_limit(self) -> int: ...
    @property
    def queue_body_bytes(self) -> int: ...
    @property
    def writer(self) -> Writer: ...
    @property
    def store(self) -> Store: ...
    @property
    def body_redaction(self) -> BodyRedactor: ...


class BodyOwner(Protocol):
    """What a body needs of its request (the ``Capture``): where its payload is named and sent."""

    @property
    def capturer(self) -> BodyLimits: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def trace_id(self) -> int: ...
    @property
    def span_id(self) -> int: ...
    @property
    def response_headers(self) -> Any: ...
    @property
    def declared_length(self) -> bytes | None: ...
    @property
    def disconnected(self) -> bool: ...


class BodyTee:
    """The copy of one body: chunks in memory up to the inline limit, then streamed to the writer."""

    __slots__ = (
        "capture", "chunks", "content_type", "direction", "first_perf", "held", "limit", "size", "stream", "unseen"
    )

    def __init__(self, capture: BodyOwner, direction: str, content_type: bytes | None, limit: int) -> None:
        self.capture = capture
        self.direction = direction
        self.content_type = content_type
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0  # the true size, also past the capture limit
        self.held = 0  # bytes kept (in memory or streamed)
        self.first_perf = 0
        self.stream: PayloadStream | None = None
        self.unseen: str | None = None  # the message type that sent body bytes past obsml, if any

    @property
    def in_memory(self) -> int:
        return 0 if self.stream is not None else self.held

    @property
    def truncated(self) -> bool:
        return self.held < self.size

    @property
    def whole(self) -> bool:
        """Writer side, once the request is over: the body kept is all of it (redaction parses only
        whole documents): not cut at the capture limit, nor short of its Content-Length, nor left
        by a client that went away."""
        if self.truncated:
            return False
        capture = self.capture
        if self.direction == "response":
            return not capture.disconnected
        declared = capture.declared_length
        return declared is None or not declared.isdigit() or int(declared) == self.size

    def feed(self, chunk: bytes) -> None:
        size = len(chunk)
        if not size:
            return
        if not self.size:
            self.first_perf = time.perf_counter_ns()
        self.size += size
        room = self.limit - self.held
        if room <= 0:
            return
        if size > room:
            chunk, size = chunk[:room], room
        self.held += size
        if self.stream is not None:
            self.stream.send(chunk)
        else:
            self.chunks.append(chunk)
            if self.held > self.capture.capturer.inline_limit:
                self._offload()

    def _offload(self) -> None:
        capturer = self.capture.capturer
        self.stream = PayloadStream(self, capturer.writer, capturer.store, capturer.queue_body_bytes)
        for chunk in self.chunks:
            self.stream.send(chunk)
        self.chunks = []

    def media_type(self) -> bytes | None:
        if self.direction == "request":
            return self.content_type
        return header_value(self.capture.response_headers, b"content-type")


class PayloadStream:
    """A body on its way to ``payloads/``. Chunks travel through the writer queue in order."""

    __slots__ = (
        "alone", "bound", "error", "failure", "hasher", "lost", "plan", "queued", "raw", "raw_size", "redacted",
        "relative", "store", "target", "tee", "uri", "writer",
    )

    def __init__(self, tee: BodyTee, writer: Writer, store: Store, bound: int) -> None:
        self.tee = tee
        self.writer = writer
        self.store = store
        self.bound = bound  # the queue's byte bound for body chunks
        self.lost: DropReason | None = None  # set on the request path when a chunk could not be queued
        self.queued = False  # a chunk reached the writer (which then holds a file to discard)
        self.alone = False  # a chunk over the queue's bound for bodies went in alone (its span must follow)
        # The rest belongs to the writer thread, which fills it in at the first chunk.
        self.relative: str | None = None
        self.error: DropReason | None = None  # the store refused a write
        self.target: Any = None  # the store's AtomicTarget
        self.hasher: Any = None
        # With body redaction (issue 15), the raw bytes wait in a private file off the store until
        # the body is whole; only the redacted document is written to the store, at the finish.
        self.plan: Plan = "direct"
        self.raw: IO[bytes] | None = None
        self.raw_size = 0
        self.redacted: Redacted | None = None  # what redaction stored, for the span
        # Once finished: where the whole payload is, or why it was lost.
        self.uri: str | None = None
        self.failure: DropReason | None = None

    def send(self, data: bytes) -> None:
        if self.lost is not None:
            return
        if self.writer.submit(_Chunk(self, data), max_bytes=self.bound):
            self.queued = True
            if len(data) > self.bound:
                self.alone = True
        else:
            self.lost = self.writer.refusal

    def abort_later(self) -> None:
        """Tell the writer to discard this stream, whose span was dropped (forced: it is tiny)."""
        self.writer.submit(_Abort(self), force=True)

    # Writer side.

    def write(self, data: bytes) -> None:
        """Open on the first chunk, hash and write as chunks arrive (or keep them for redaction)."""
        if self.error is not None:
            return
        try:
            if self.relative is None:
                self.relative = payload_path(self.tee)
                self.plan = self.tee.capture.capturer.body_redaction.plan(self.tee.media_type())
                if self.plan == "redact":
                    self.raw = self.tee.capture.capturer.body_redaction.raw_file()
                elif self.plan == "direct":
                    self.hasher = sha256()
                    self.target = self.store.open_atomic(self.relative)
            if self.raw is not None:
                self._keep_raw(data)
                return
            if self.target is None:  # "drop": nothing of this body is kept
                return
            self.target.write(data)
        except Exception as exc:
            # Counted (and logged once a minute) when its span is built.
            self.error = failure_reason(exc)
            logger.debug("obsml could not write a payload to the store", exc_info=True)
            return
        self.hasher.update(data)

    def _keep_raw(self, data: bytes) -> None:
        assert self.raw is not None
        self.raw_size += len(data)
        redactor = self.tee.capture.capturer.body_redaction
        if self.raw_size > redactor.max_bytes and redactor.drop_unparseable:
            self.raw.close()  # over the budget and to be dropped: keep no more of it
            self.raw = None
            self.plan = "drop"
            return
        self.raw.write(data)

    def finish(self, commit: bool) -> None:
        """Commit the payload (setting :attr:`uri`), or abort it; :attr:`failure` says why it was lost."""
        reason = self.lost or self.error
        if self.plan != "direct" and reason is None and commit and self.relative is not None:
            reason = self._redact_and_write()
        raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()  # its bytes go with it (a file without a name)
        target, self.target = self.target, None
        try:
            if target is not None:
                if commit and reason is None:
                    target.commit()
                else:
                    target.abort()
        except Exception as exc:
            reason = reason or failure_reason(exc)
        if reason is not None and commit:
            record_drop("payload", reason)
        self.failure = reason
        if commit and reason is None and self.relative is not None:
            self.uri = self.store.uri(self.relative)

    def _redact_and_write(self) -> DropReason | None:
        """Writer side, the body whole: redact it and open the store's object with the result."""
        assert self.relative is not None
        redactor = self.tee.capture.capturer.body_redaction
        raw = self.raw
        if raw is None:  # "drop": unparseable, or over the budget, and OBSML_REDACT_UNPARSEABLE=drop
            return "unredactable"
        raw.seek(0)
        whole = self.tee.whole
        if self.raw_size > redactor.max_bytes and whole:
            result: Redacted | None = None  # over the budget, kept as received (copied in pieces below)
        else:
            redacted = redact_or_drop(redactor, raw.read(), self.tee.media_type(), self.tee.direction, whole)
            if isinstance(redacted, str):
                return redacted
            result = redacted
        self.hasher = sha256()
        try:
            self.target = self.store.open_atomic(self.relative)
            if result is not None:
                self._store_bytes(result.data)
            else:
                raw.seek(0)
                while piece := raw.read(1 << 20):
                    self._store_bytes(piece)
        except Exception as exc:
            logger.debug("obsml could not write a payload to the store", exc_info=True)
            return failure_reason(exc)
        self.redacted = result
        return None

    def _store_bytes(self, data: bytes) -> None:
        self.target.write(data)
        self.hasher.update(data)


class _Chunk:
    __slots__ = ("data", "nbytes", "stream")

    def __init__(self, stream: PayloadStream, data: bytes) -> None:
        self.stream = stream
        self.data = data
        self.nbytes = len(data)

    def run(self) -> None:
        self.stream.write(self.data)


class _Abort:
    __slots__ = ("stream",)
    nbytes = 0

    def __init__(self, stream: PayloadStream) -> None:
        self.stream = stream

    def run(self) -> None:
        self.stream.finish(commit=False)


def payload_path(tee: BodyTee) -> str:
    """Where a body goes in the store (computed on the writer, off the request path)."""
    capture = tee.capture
    return (
        f"payloads/{utc_folders(capture.start_ns)}/{capture.trace_id:032x}-{capture.span_id:016x}-{tee.direction}"
        f".{extension_for(tee.media_type())}"
    )


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
