"""A body's one home: its copy on the request path, and its way to ``payloads/`` in the store.

On the request path a :class:`BodyTee` keeps a body's chunks in memory up to the inline
limit; past it, a :class:`PayloadStream` copies them into reusable slabs and queues each full
slab. A body whose last chunk is the one that crosses the limit (a body sent or read as one
chunk) is not streamed: it is kept by reference and goes to the writer with its span, in the
span's job. Everything else (the file name, the hash, the writes, the commit) happens on the
background writer, slab jobs in order. The
writer finishes (commits or aborts) a stream before its span's attributes are built, so that
building them touches no file.
"""

from __future__ import annotations

import time
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

from ._body_redaction import redact_or_drop
from ._headers import header_value
from ._objects import failure_reason, utc_folders
from ._raw_body import RawBody
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
        "capture", "chunks", "content_type", "direction", "first_perf", "held", "inline_limit", "limit", "size",
        "stream", "unseen",
    )

    def __init__(
        self, capture: BodyOwner, direction: str, content_type: bytes | None, limit: int, inline_limit: int
    ) -> None:
        self.capture = capture
        self.direction = direction
        self.content_type = content_type
        self.limit = limit
        self.inline_limit = inline_limit
        self.chunks: list[bytes] = []
        self.size = 0  # the true size, also past the capture limit
        self.held = 0  # bytes kept (in memory or streamed)
        self.first_perf = 0
        self.stream: PayloadStream | None = None
        self.unseen: str | None = None  # the message type that sent body bytes past obsml, if any

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

    def feed(self, chunk: bytes | memoryview) -> None:
        """Keep ``chunk``'s bytes (a memoryview is the caller's buffer, reused after this call)."""
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
        stream = self.stream
        if stream is not None:
            stream.send(chunk)
        elif self.held <= self.inline_limit:
            self.chunks.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
        elif self.held - size <= self.inline_limit and isinstance(chunk, bytes):
            # The chunk crossing the inline limit, immutable: kept by reference, as yet unstreamed. If
            # it is the body's last, the body goes to the writer with its span, one job (``carried``);
            # if another chunk follows, the body is streamed from the first byte as before.
            self.chunks.append(chunk)
        else:
            self._offload(chunk)

    @property
    def carried(self) -> bool:
        """Past the inline limit but not streamed: the body goes to the writer with its span."""
        return self.stream is None and self.held > self.inline_limit

    def _offload(self, chunk: bytes | memoryview | None = None) -> None:
        """Past the inline limit: stream what is kept, then ``chunk`` (a memoryview straight into slabs)."""
        capturer = self.capture.capturer
        stream = self.stream = PayloadStream(self, capturer.writer, capturer.store, capturer.queue_body_bytes)
        if self.chunks:
            for kept in self.chunks:
                stream.send(kept)
            self.chunks = []
        if chunk is not None:
            stream.send(chunk)

    def stream_carried(self) -> None:
        """Request side: send a carried body ahead of its span after all, as separate slab jobs."""
        self._offload()
        assert self.stream is not None
        self.stream.send_slab()

    def write_carried(self) -> None:
        """Writer side, first thing in its capture's job: write a carried body, kept whole in memory.

        Its stream counts the body's bytes as the capture's own (:attr:`PayloadStream.carried`):
        the capture's ``nbytes`` stays what it was when the capture was queued.
        """
        capturer = self.capture.capturer
        stream = PayloadStream(self, capturer.writer, capturer.store, capturer.queue_body_bytes)
        stream.carried = self.held
        stream.queued = True
        for kept in self.chunks:
            stream.write(memoryview(kept))
        self.chunks = []
        self.stream = stream

    def media_type(self) -> bytes | None:
        if self.direction == "request":
            return self.content_type
        return header_value(self.capture.response_headers, b"content-type")


# A streamed body's small chunks, and every chunk read into the app's own buffer (readinto), are
# copied into slabs of this size, each queued for the writer once full: one job per slab rather
# than per chunk, and the slabs come back for reuse once written. A copy per chunk, held until the
# writer ran, made every request allocate fresh memory, which the allocator had meanwhile given back
# to the system: the page faults cost more than the copy (issue 16).
SLAB_BYTES = 64 * 1024
_IDLE_SLABS = 256  # kept for reuse (16 MiB); more are freed when written
_idle_slabs: list[bytearray] = []  # list.pop and list.append are atomic: no lock needed


class PayloadStream:
    """A body on its way to ``payloads/``. Slabs travel through the writer queue in order."""

    __slots__ = (
        "alone", "bound", "carried", "error", "failure", "filled", "hasher", "lost", "plan", "queued", "raw",
        "redacted", "relative", "slab", "store", "stored_size", "target", "tee", "uri", "writer",
    )

    def __init__(self, tee: BodyTee, writer: Writer, store: Store, bound: int) -> None:
        self.tee = tee
        self.writer = writer
        self.store = store
        self.bound = bound  # the queue's byte bound for body chunks
        self.lost: DropReason | None = None  # set on the request path when a chunk could not be queued
        self.queued = False  # a chunk reached the writer (which then holds a file to discard)
        self.alone = False  # a slab over the queue's bound for bodies went in alone (its span must follow)
        self.slab: bytearray | None = None  # the slab being filled, not yet queued
        self.filled = 0
        self.carried = 0  # bytes that came with the span, in its job (BodyTee.write_carried)
        # The rest belongs to the writer thread, which fills it in at the first chunk.
        self.relative: str | None = None
        self.error: DropReason | None = None  # the store refused a write
        self.target: Any = None  # the store's AtomicTarget
        self.hasher: Any = None
        # With body redaction (issue 15), the raw bytes wait off the store (in memory or a private
        # file) until the body is whole; only the redacted document is written to the store, at the finish.
        self.plan: Plan = "direct"
        self.raw: RawBody | None = None
        self.redacted: Redacted | None = None  # what redaction replaced, for the span (without the bytes)
        self.stored_size = 0
        # Once finished: where the whole payload is, or why it was lost.
        self.uri: str | None = None
        self.failure: DropReason | None = None

    def send(self, data: bytes | memoryview) -> None:
        """Copy ``data`` into slabs, queueing each one that fills up (a big chunk goes as it is)."""
        if self.lost is not None:
            return
        if len(data) > self.bound or (len(data) >= SLAB_BYTES and isinstance(data, bytes)):
            # A slab's worth or more of immutable bytes goes as it is, one job, kept by reference
            # (copying 1 MB responses into slabs was slower in the benchmarks). Over the queue's whole bound for bodies,
            # it goes in alone, when the queue is empty (slabs of it could never all be queued).
            if self.slab is not None:
                self.send_slab()
            self._queue(data if isinstance(data, bytes) else bytes(data), len(data))
            return
        view = memoryview(data)
        start, end = 0, len(view)
        while start < end and self.lost is None:
            if self.slab is None:
                self.slab = _idle_slabs.pop() if _idle_slabs else bytearray(SLAB_BYTES)
            size = min(end - start, SLAB_BYTES - self.filled)
            self.slab[self.filled : self.filled + size] = view[start : start + size]
            self.filled += size
            start += size
            if self.filled == SLAB_BYTES:
                self.send_slab()

    def send_slab(self) -> None:
        """Queue the slab being filled (a refusal loses the payload, and the slab is reused)."""
        slab, self.slab = self.slab, None
        if slab is not None:
            filled, self.filled = self.filled, 0
            if not self._queue(slab, filled):
                release_slab(slab)

    def _queue(self, data: bytes | bytearray, filled: int) -> bool:
        if self.lost is not None:
            return False
        if self.writer.submit(_Slab(self, data, filled), max_bytes=self.bound):
            self.queued = True
            if len(data) > self.bound:
                self.alone = True
            return True
        self.lost = self.writer.refusal
        return False

    def abort_later(self) -> None:
        """Tell the writer to discard this stream, whose span was dropped (forced: it is tiny)."""
        self.writer.submit(_Abort(self), force=True)

    # Writer side.

    def write(self, data: memoryview) -> None:
        """Open on the first slab, hash and write as slabs arrive (or keep them for redaction).

        ``data`` is a slab reused once this returns: every path copies it (a file write) before then."""
        if self.error is not None:
            return
        try:
            if self.relative is None:
                self.relative = payload_path(self.tee)
                self.plan = self.tee.capture.capturer.body_redaction.plan(self.tee.media_type())
                if self.plan == "redact":
                    self.raw = RawBody(self.tee.capture.capturer.body_redaction)
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

    def _keep_raw(self, data: memoryview) -> None:
        raw = self.raw
        assert raw is not None
        redactor = raw.redactor
        if raw.size + len(data) > redactor.max_bytes and redactor.drop_unparseable:
            raw.close()  # over the budget and to be dropped: keep no more of it
            self.raw = None
            self.plan = "drop"
            return
        raw.write(data)

    def finish(self, commit: bool) -> None:
        """Commit the payload (setting :attr:`uri`), or abort it; :attr:`failure` says why it was lost."""
        reason = self.lost or self.error
        if self.plan != "direct" and reason is None and commit and self.relative is not None:
            reason = self._redact_and_write()
        raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()
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
        whole = self.tee.whole
        if raw.size > redactor.max_bytes and whole:
            result: Redacted | None = None  # over the budget, kept as received (copied in pieces below)
        else:
            redacted = redact_or_drop(redactor, raw.take(), self.tee.media_type(), self.tee.direction, whole)
            if isinstance(redacted, str):
                return redacted
            result = redacted
        self.hasher = sha256()
        try:
            self.target = self.store.open_atomic(self.relative)
            if result is not None:
                self._store_bytes(result.data)
            else:
                for piece in raw.pieces():
                    self._store_bytes(piece)
        except Exception as exc:
            logger.debug("obsml could not write a payload to the store", exc_info=True)
            return failure_reason(exc)
        # The span needs only the counts: a stream kept until its span is built (or longer, when a
        # dropped span's stream waits for its abort) must not keep a whole body with it.
        self.redacted = None if result is None else result._replace(data=b"")
        return None

    def _store_bytes(self, data: bytes) -> None:
        self.target.write(data)
        self.hasher.update(data)
        self.stored_size += len(data)


def release_slab(slab: bytes | bytearray) -> None:
    if isinstance(slab, bytearray) and len(_idle_slabs) < _IDLE_SLABS:
        _idle_slabs.append(slab)


class _Slab:
    __slots__ = ("filled", "nbytes", "slab", "stream")

    def __init__(self, stream: PayloadStream, slab: bytes | bytearray, filled: int) -> None:
        self.stream = stream
        self.slab = slab
        self.filled = filled
        self.nbytes = len(slab)  # what it holds in memory, also when the body's last slab is not full

    def run(self) -> None:
        # Reused once written: the store's writes copy (a buffered file) or are done on return.
        try:
            self.stream.write(memoryview(self.slab)[: self.filled])
        finally:
            release_slab(self.slab)


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
