"""Part files: records batched per partition folder and written to the store as whole objects.

One writer of part files serves every format that lands as a partitioned dataset: the jsonl
span exporter (``traces/<yyyy>/<mm>/<dd>/<hh>/``) and the model data collector
(``modeldata/…``). A batch is written as ``<folder>/<writer-id>-<sequence><suffix>``, the
writer id ``<pid>-<random>`` being renewed in a forked child (which keeps none of its
parent's batches), once the pending records pass a count or a size, or when the background
writer's interval (or a flush) comes. Records are counted as written only once their part
file is in the store (or its spool).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._objects import describe_error, failure_reason
from ._stats import count, logger, record_drop

if TYPE_CHECKING:
    from ._stats import Counter
    from ._store import Store

MAX_RECORDS = 1000
# A part file is also written once its records pass this size, so that a batch of large
# records (spans with inline bodies up to the inline limit, twice) stays small: it counts in
# obsml's worst-case memory.
MAX_BYTES = 8 * 1024 * 1024


class PartFiles:
    """Batches of records, one per partition folder.

    ``kind`` names the records in drop counts; ``written`` is the counter of records written.
    Records are ``bytes`` lines written as they are, unless ``encode`` is given: then a batch
    of any records becomes its file's bytes through it (a CSV header, one Parquet table).
    """

    def __init__(
        self,
        store: Store,
        *,
        kind: str,
        written: Counter,
        suffix: str = ".jsonl",
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
        encode: Callable[[list[Any]], Iterable[bytes]] | None = None,
    ) -> None:
        self._store = store
        self._kind = kind
        self._written: Counter = written
        self._suffix = suffix
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._encode = encode
        self._lock = threading.Lock()
        self._pid = 0
        self._writer_id = ""
        self._seq = 0
        self._batches: dict[str, list[Any]] = {}
        self._pending = 0
        self._pending_bytes = 0

    def add(self, folder: str, record: Any, size: int = 0) -> None:
        """Batch ``record`` for the part file of ``folder``; writes out every batch once they are full.

        ``size`` is the record's bytes when it is not ``bytes`` itself (an estimate will do).
        """
        with self._lock:
            if self._pid != os.getpid():  # a forked child names its own files and keeps none of the parent's
                self._pid, self._writer_id, self._seq = os.getpid(), f"{os.getpid()}-{secrets.token_hex(4)}", 0
                self._batches, self._pending, self._pending_bytes = {}, 0, 0
            self._batches.setdefault(folder, []).append(record)
            self._pending += 1
            self._pending_bytes += size or len(record)
            full = self._pending >= self._max_records or self._pending_bytes >= self._max_bytes
        if full:
            self.flush()

    def tick(self, force: bool) -> None:
        """A :class:`~obsml._writer.Ticker`: what is batched is due at every interval."""
        self.flush()

    def flush(self) -> bool:
        """Write every batch out as a part file; False when one could not be written (counted)."""
        with self._lock:
            batches, self._batches, self._pending, self._pending_bytes = self._batches, {}, 0, 0
            names = []
            for folder in batches:
                self._seq += 1
                names.append(f"{folder}/{self._writer_id}-{self._seq:06d}{self._suffix}")
        ok = True
        for name, records in zip(names, batches.values(), strict=True):
            try:
                self._write(name, records)
            except Exception as exc:
                ok = False
                record_drop(self._kind, failure_reason(exc), len(records), detail=describe_error(exc))
                logger.debug("obsml could not write %s", name, exc_info=True)
            else:
                count(self._written, len(records))
        return ok

    def _write(self, name: str, records: list[Any]) -> None:
        # Record by record into the store's atomic object: joining them first would copy the batch.
        target = self._store.open_atomic(name)
        try:
            for chunk in records if self._encode is None else self._encode(records):
                target.write(chunk)
        except BaseException:
            target.abort()
            raise
        target.commit()
