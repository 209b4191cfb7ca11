"""The traffic ``obsml demo`` sends to the credit examples, and its summary of what obsml captured.

``obsml demo`` (obsml/_demo.py) serves ``examples.fastapi_credit`` or ``examples.flask_credit``,
calls :func:`send_traffic` against it, reads the spans back through the store's reader
(``obsml._reader``) and prints :func:`summarise`. The mix is fixed by a seed: small, large (offloaded
bodies), streaming and bad-input requests, about half with an ``x-correlation-id``. Once the server
has stopped, :func:`collect_labels` plays the batch job that learns, later, whether some applicants
defaulted, and :func:`show_model_data` prints the head of inputs ⋈ predictions ⋈ labels as
``obsml.modeldata.joined`` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import obsml

if TYPE_CHECKING:
    import httpx

    from obsml._reader import StoreReader

REQUEST_TIMEOUT_S = 15.0
LARGE_ROWS = 1500  # rows in a "large" request: about 160 KB of JSON in, 80 KB out
STREAM_ROWS = 20
SEED = 17
LABEL_EVERY = 2  # a label arrives for every second scored request
DEFAULT_RATE = 0.2  # of the labelled applicants, the share that defaulted
SHOWN_ROWS = 12  # rows of the joined table printed
# Columns of the joined table shown, most wanted first: the last ones go when the terminal is narrow.
SHOWN_COLUMNS = (
    "correlation_id", "row", "income", "probability_of_default", "decision", "defaulted",
    "age", "debt_ratio", "loan_amount", "credit_lines", "late_payments",
)


@dataclasses.dataclass
class Sent:
    """One request the demo sent and what came back."""

    kind: str  # small, large, bad, stream, bad-stream
    path: str
    expect: int
    correlation_id: str | None = None
    rows: int = 0
    status: int = 0
    echoed_id: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    events: int = 0
    client_ttfb_ms: float | None = None
    error: str | None = None


def _applicant(rng: random.Random) -> dict[str, Any]:
    return {
        "income": round(rng.lognormvariate(math.log(55.0), 0.5), 1),
        "debt_ratio": round(rng.betavariate(2.0, 5.0), 3),
        "age": rng.randint(18, 79),
        "credit_lines": rng.randint(0, 10),
        "late_payments": rng.choice((0, 0, 0, 0, 1, 1, 2, 3)),
        "loan_amount": round(max(1.0, rng.gauss(20.0, 10.0)), 1),
    }


def _plan(requests: int) -> list[str]:
    large = max(1, round(requests * 0.05))
    bad = max(1, round(requests * 0.10))
    stream = max(1, round(requests * 0.10))
    bad_stream = 1 if bad >= 3 else 0
    small = requests - large - bad - stream
    plan = ["small"] * small + ["large"] * large + ["bad"] * (bad - bad_stream)
    plan += ["bad-stream"] * bad_stream + ["stream"] * stream
    random.Random(SEED).shuffle(plan)
    return plan


def send_traffic(httpx: Any, base: str, requests: int) -> list[Sent]:
    rng = random.Random(SEED)
    sent: list[Sent] = []
    loan = 17
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        for kind in _plan(requests):
            headers = {"content-type": "application/json"}
            correlation_id = None
            seen[kind] += 1
            if kind == "large" or seen[kind] % 2 == 1:
                correlation_id = f"loan-2024-{loan:05d}"
                loan += 1
                headers["x-correlation-id"] = correlation_id
            if kind == "large":
                rows = [_applicant(rng) for _ in range(LARGE_ROWS)]
            elif kind in ("stream", "bad-stream"):
                rows = [_applicant(rng) for _ in range(STREAM_ROWS)]
            else:
                rows = [_applicant(rng) for _ in range(rng.randint(1, 5))]
            if kind.startswith("bad"):
                broken = rows[rng.randrange(len(rows))]
                if rng.random() < 0.5:
                    broken["income"] = "n/a"  # a non-numeric feature
                else:
                    del broken["debt_ratio"]  # a missing feature
                # uvicorn closes the connection after an exception escaped the app, without saying
                # so in the 500 it sent: a keep-alive client would then reuse a dead connection.
                headers["connection"] = "close"
            path = "/score/stream" if kind.endswith("stream") else "/score"
            body = json.dumps({"rows": rows}).encode()
            expect = 500 if kind.startswith("bad") else 200
            record = Sent(kind, path, expect, correlation_id, rows=len(rows), request_bytes=len(body))
            try:
                if kind == "stream":
                    _stream(client, record, body, headers)
                else:
                    response = client.post(path, content=body, headers=headers)
                    record.status = response.status_code
                    record.echoed_id = response.headers.get("x-correlation-id")
                    record.response_bytes = len(response.content)
            except httpx.HTTPError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            sent.append(record)
    return sent


def _stream(client: httpx.Client, record: Sent, body: bytes, headers: dict[str, str]) -> None:
    started = time.perf_counter()
    with client.stream("POST", record.path, content=body, headers=headers) as response:
        record.status = response.status_code
        record.echoed_id = response.headers.get("x-correlation-id")
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            record.error = f"content-type {response.headers.get('content-type')!r}, not text/event-stream"
        for chunk in response.iter_bytes():  # read as it arrives: the events come one by one
            if record.client_ttfb_ms is None and chunk:
                record.client_ttfb_ms = (time.perf_counter() - started) * 1000
            record.response_bytes += len(chunk)
            record.events += chunk.count(b"data: ")
    if record.events != STREAM_ROWS and record.error is None:
        record.error = f"{record.events} events for {STREAM_ROWS} rows"


def describe_sent(sent: list[Sent]) -> str:
    kinds = Counter(record.kind for record in sent)
    with_id = sum(1 for record in sent if record.correlation_id)
    large_kb = max((r.request_bytes for r in sent if r.kind == "large"), default=0) // 1024
    parts = [
        f"{kinds['small']} small /score",
        f"{kinds['large']} large /score (~{large_kb} KB)",
        f"{kinds['stream']} streaming /score/stream",
        f"{kinds['bad'] + kinds['bad-stream']} with a bad row (500 expected)",
    ]
    return f"{len(sent)} requests ({', '.join(parts)}; {with_id} with x-correlation-id)"


def client_problems(sent: list[Sent]) -> Iterator[str]:
    for record in sent:
        if record.error:
            yield f"{record.kind} {record.path}: {record.error}"
        elif record.status != record.expect:
            yield f"{record.kind} {record.path}: status {record.status}, expected {record.expect}"
    # A 500 from an exception is written by Starlette's error middleware, outside add_middleware's
    # obsml: it has no x-correlation-id (the span still has the id; see the README).
    missing = [r for r in sent if r.error is None and r.echoed_id is None and r.status < 500]
    if missing:
        by_status = sorted(Counter(r.status for r in missing).items())
        statuses = ", ".join(f"{status} x{n}" for status, n in by_status)
        yield f"{len(missing)} response(s) came back without an x-correlation-id header (status {statuses})"
    wrong = [r for r in sent if r.correlation_id and r.echoed_id and r.echoed_id != r.correlation_id]
    if wrong:
        yield f"{len(wrong)} response(s) echoed a different x-correlation-id than was sent"


def say(out: IO[str], text: str) -> None:
    print(text, file=out, flush=True)


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {_percentile(values, 50):.1f} ms, p95 {_percentile(values, 95):.1f} ms  (n={len(values)})"


def summarise(
    out: IO[str],
    reader: StoreReader,
    sent: list[Sent],
    inline_limit: int,
    spans: list[dict[str, Any]],
    by_pid: Counter[str],
    traces: list[str],
    payloads: list[str],
    log_name: str,
) -> int:
    def attrs(span: dict[str, Any]) -> dict[str, Any]:
        value = span.get("attributes")
        return value if isinstance(value, dict) else {}

    def failed(span: dict[str, Any]) -> bool:
        status = attrs(span).get("http.response.status_code")
        return (isinstance(status, int) and status >= 500) or span.get("status", {}).get("code") == "ERROR"

    by_name = Counter(str(span.get("name")) for span in spans)
    failures = [span for span in spans if failed(span)]
    uris = [k for span in spans for k in attrs(span) if k.startswith("obsml.") and k.endswith(".body.uri")]
    offloaded_spans = sum(1 for span in spans if any(k.endswith(".body.uri") for k in attrs(span)))
    disconnected = sum(1 for span in spans if attrs(span).get("obsml.client.disconnected") is True)
    lost = sum(1 for span in spans for key in attrs(span) if key.endswith(".body.lost"))
    from_header = sum(1 for s in spans if attrs(s).get("obsml.correlation_id.source") == "x-correlation-id")
    latency: dict[str, list[float]] = {}
    for span in spans:
        if isinstance(span.get("duration_ms"), (int, float)):
            latency.setdefault(str(span.get("name")), []).append(float(span["duration_ms"]))
    name_width = max((len(name) for name in latency), default=0)
    ttfb = [
        float(attrs(span)["obsml.response.time_to_first_byte_ms"])
        for span in spans
        if attrs(span).get("http.route") == "/score/stream" and not failed(span)
        and isinstance(attrs(span).get("obsml.response.time_to_first_byte_ms"), (int, float))
    ]  # fmt: skip
    client_ttfb = [r.client_ttfb_ms for r in sent if r.client_ttfb_ms is not None]

    bad_sent = sum(1 for r in sent if r.kind.startswith("bad"))
    big_sent = sum(1 for r in sent if r.request_bytes > inline_limit) + sum(
        1 for r in sent if r.response_bytes > inline_limit and r.kind != "stream"
    )
    expected_spans = len(sent) + 1  # and the /health call that found the server up

    names = ", ".join(f"{name} {n}" for name, n in sorted(by_name.items()))
    rows = [
        ("requests captured", f"{len(spans)}  ({names or 'none'}; {len(sent)} sent + 1 health check)"),
        ("failures", f"{len(failures)}  (status >= 500 or ERROR; {bad_sent} bad-input requests sent)"),
        ("correlation ids", f"{from_header} from x-correlation-id, {len(spans) - from_header} generated"),
        ("server processes", f"{len(by_pid)}  ({', '.join(f'pid {p}: {n} spans' for p, n in sorted(by_pid.items()))})"),
        (
            "offloaded bodies",
            f"{len(uris)} in {offloaded_spans} requests, {len(payloads)} new files under payloads/"
            f"  ({big_sent} bodies over {inline_limit // 1024} KB sent or received)",
        ),
        *(
            ("latency" if i == 0 else "", f"{name:<{name_width}}  {_ms(values)}")
            for i, (name, values) in enumerate(sorted(latency.items()))
        ),
        ("streaming TTFB", f"{_ms(ttfb)}; client saw {_ms(client_ttfb)}" if ttfb or client_ttfb else "-"),
    ]
    say(out, f"What obsml captured ({len(traces)} new trace file(s) in {reader.shown()}):")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        say(out, f"  {label:<{width}}  {value}")
    for folder, files in (("traces", traces), ("payloads", payloads)):
        folders = sorted({path.rsplit("/", 1)[0] for path in files})
        for relative in folders:
            say(out, f"  {folder + ':':<{width}}  {reader.shown(relative)}/")
    say(out, f"  {'server log:':<{width}}  {log_name}")

    notes = []
    if len(spans) != expected_spans:
        notes.append(f"{len(spans)} spans for {expected_spans} requests")
    if len(failures) != bad_sent:
        notes.append(f"{len(failures)} failed spans for {bad_sent} bad-input requests")
    if len(uris) != big_sent or len(payloads) != big_sent:
        notes.append(f"{len(uris)} body URIs and {len(payloads)} payload files for {big_sent} large bodies")
    if disconnected:
        notes.append(f"{disconnected} span(s) say obsml.client.disconnected, but every client read its whole response")
    if lost:
        notes.append(f"{lost} bodies lost on the way to the store (obsml.*.body.lost)")
    for note in notes:
        say(out, f"  ! {note}")
    if not spans:
        print(f"obsml demo: error: no spans were written to the store; see {log_name}", file=sys.stderr)
        return 1
    return 0


# --- model data: labels known later, and the joined table -----------------------------------------


def _scored(sent: list[Sent]) -> list[Sent]:
    """The requests the model answered: their rows and predictions were collected under ``echoed_id``."""
    return [r for r in sent if r.status == 200 and r.error is None and r.echoed_id]


def collect_labels(sent: list[Sent], store: str, health: dict[str, Any]) -> dict[str, list[bool]]:
    """What a batch job does once outcomes are known: one label a row (``defaulted``) for every
    ``LABEL_EVERY``-th scored request, collected outside any request under its correlation id."""
    rng = random.Random(SEED)
    labels = obsml.Collector(
        health["model"], "labels", ["defaulted"], store=store, service=health["service"], version=health["version"]
    )
    collected: dict[str, list[bool]] = {}
    for record in _scored(sent)[::LABEL_EVERY]:
        assert record.echoed_id is not None
        defaulted = [rng.random() < DEFAULT_RATE for _ in range(record.rows)]
        labels.collect([[value] for value in defaulted], correlation_id=record.echoed_id)
        collected[record.echoed_id] = defaulted
    obsml.flush(30)
    return collected


def show_model_data(
    out: IO[str], store: str, model: str, since: datetime, sent: list[Sent], labels: dict[str, list[bool]]
) -> int:
    """Print the head of ``obsml.modeldata.joined`` since the demo began; 1 when rows are missing."""
    from obsml import modeldata

    table = modeldata.joined(store, model, since=since)
    scored = _scored(sent)
    expected_rows = sum(r.rows for r in scored)
    predicted = int(table["decision"].notna().sum()) if "decision" in table else 0
    labelled = int(table["defaulted"].notna().sum()) if "defaulted" in table else 0
    label_rows = sum(len(values) for values in labels.values())
    say(out, "")
    say(out, f"Model data (obsml.modeldata.joined: inputs ⋈ predictions ⋈ labels, {model}):")
    say(out, f"  {len(table)} input rows of {len(scored)} scored requests, {predicted} with their prediction, "
             f"{labelled} labelled later ({len(labels)} requests)")
    notes = []
    if len(table) != expected_rows or predicted != expected_rows:
        notes.append(f"{len(table)} input and {predicted} prediction rows for {expected_rows} rows scored")
    if labelled != label_rows:
        notes.append(f"{labelled} labelled rows for {label_rows} labels collected")
    for note in notes:
        say(out, f"  ! {note}")
    if not table.empty:
        say(out, _aligned(table.head(SHOWN_ROWS), shutil.get_terminal_size().columns - 2))
    return 1 if notes else 0


def _aligned(table: Any, width: int) -> str:
    """``table``'s wanted columns as text lines no wider than ``width``, dropping the least wanted."""
    columns = [c for c in SHOWN_COLUMNS if c in table.columns]
    while True:
        shown = table[[c for c in table.columns if c in columns]].astype(object)  # NaN and <NA> alike
        text = shown.where(shown.notna(), "-").to_string(index=False)
        if len(columns) <= 2 or max(map(len, text.splitlines())) <= width:
            return "\n".join(f"  {line}" for line in text.splitlines())
        columns.pop()
