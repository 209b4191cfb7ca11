"""An offloaded body waiting for redaction: in memory under a budget, else in a private file; and
the working memory of redacting a large JSON body, which the writer pays for every such body."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

from obsml._body_redaction import BodyRedactor
from obsml._raw_body import IN_MEMORY_BODY, IN_MEMORY_TOTAL, RawBody


def raw_body(redactor: BodyRedactor, data: bytes, slab: int = 64 * 1024) -> RawBody:
    raw = RawBody(redactor)
    for start in range(0, len(data), slab):
        raw.write(memoryview(data)[start : start + slab])
    return raw


def test_a_small_body_waits_in_memory_and_no_file_is_made(tmp_path: Path) -> None:
    redactor = BodyRedactor((), (), raw_dir=tmp_path / "raw")
    body = b'{"password":"CANARY"}' * 5000
    raw = raw_body(redactor, body)
    assert redactor.raw_in_memory == len(body)
    assert raw.take() == body
    assert redactor.raw_in_memory == 0
    raw.close()
    assert not (tmp_path / "raw").exists()


def test_a_body_over_the_memory_limit_waits_in_a_private_file_whole(tmp_path: Path) -> None:
    redactor = BodyRedactor((), (), raw_dir=tmp_path / "raw")
    body = bytes(range(256)) * (IN_MEMORY_BODY // 256 + 1)
    raw = raw_body(redactor, body)
    assert raw.file is not None and redactor.raw_in_memory == 0
    assert b"".join(raw.pieces()) == body
    raw.close()
    assert list((tmp_path / "raw").iterdir()) == []  # its file never had a name


def test_bodies_past_the_budget_go_to_files_until_the_waiting_ones_are_let_go(tmp_path: Path) -> None:
    redactor = BodyRedactor((), (), raw_dir=tmp_path / "raw")
    body = b"x" * IN_MEMORY_BODY
    waiting = [raw_body(redactor, body) for _ in range(IN_MEMORY_TOTAL // IN_MEMORY_BODY)]
    assert redactor.raw_in_memory == IN_MEMORY_TOTAL
    past = raw_body(redactor, body)
    assert past.file is not None and past.take() == body
    for raw in [*waiting, past]:
        raw.close()
    assert redactor.raw_in_memory == 0
    assert raw_body(redactor, body).file is None


def redaction_peak(redactor: BodyRedactor, body: bytes) -> tuple[int, bool]:
    """The tracemalloc peak of what the writer does with an offloaded body: keep it, take it, redact it."""
    gc.collect()
    tracemalloc.start()
    try:
        raw = raw_body(redactor, body)
        result = redactor.redact(raw.take(), b"application/json", "request")
        raw.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result is not None
    return peak, result.rebuilt


def records(n: int, secret: bool) -> bytes:
    named = "token" if secret else "label"
    return json.dumps([{"id": i, "score": i / 7, "name": f"row {i}", named: "t"} for i in range(n)]).encode()


def test_a_large_json_body_no_rule_names_is_redacted_in_about_twice_its_size(tmp_path: Path) -> None:
    # Never parsed (the key screen): the bytes it waited in, and the one copy taken of them.
    body = records(20000, secret=False)
    peak, rebuilt = redaction_peak(BodyRedactor((), (), raw_dir=tmp_path / "raw"), body)
    assert not rebuilt
    assert peak < 2.5 * len(body)


def test_a_large_json_body_with_named_fields_is_redacted_within_a_bounded_multiple_of_its_size(
    tmp_path: Path,
) -> None:
    # Parsed and re-serialized: the document's objects, then the encoder's pieces (8x for these
    # records in 2026-12; 18x for records of small integers: the README's memory bound says so).
    body = records(20000, secret=True)
    peak, rebuilt = redaction_peak(BodyRedactor((), (), raw_dir=tmp_path / "raw"), body)
    assert rebuilt
    assert peak < 12 * len(body)
