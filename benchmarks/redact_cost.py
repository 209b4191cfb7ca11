"""What body redaction costs on the writer thread, per 1 KB and per 100 KB body (issue 15).

In process, no server: redaction never runs on the request path, so what it adds is writer time
per body. Timed with ``perf_counter_ns`` (median and p99 over the rounds) for JSON bodies of
scoring requests (a 1 KB one, and a 100 KB one of 400 records), each with and without secrets
in it, under: no rules (``OBSML_REDACT_FIELDS=none``: today's path, nothing parsed), the default
field list, and the default list plus two dotted paths and a card-number pattern. A body over
the inline limit also makes a round trip through a private temporary file before it is
redacted: that is timed for 100 KB too. A naive recursive redactor (``json.loads``, recursion,
``json.dumps``, the same name rules) is kept alongside as the reference the walk is compared with.

    .venv/bin/python benchmarks/redact_cost.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from obsml._body_redaction import BodyRedactor
from obsml._field_rules import FieldRules
from obsml._secrets import REDACTED

CARD = r"\b(?:\d{4}[ -]?){3}\d{4}\b"


def record(i: int, secret: bool) -> dict[str, Any]:
    features = {f"f{j}": (i * j) % 97 / 7 for j in range(12)}
    applicant = {"name": f"applicant {i}", "age": 30 + i % 40, "income": 1000.5 * (i % 13)}
    if secret:
        applicant |= {"ssn": "123-45-6789", "password": "hunter2", "note": "card 4111 1111 1111 1234"}
    return {"id": i, "applicant": applicant, "features": features, "tags": ["a", "b"]}


def body(size: int, secret: bool) -> bytes:
    records: list[dict[str, Any]] = []
    while len(json.dumps({"records": records})) < size:
        records.append(record(len(records), secret and not records))  # secrets in the first record only
    return json.dumps({"records": records}).encode()


NAIVE_RULES = FieldRules(())


def naive(data: bytes) -> bytes:
    """The reference: parse, recurse, replace by the same name rules, always serialize."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: REDACTED if NAIVE_RULES.redacts_name(k) else walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return json.dumps(walk(json.loads(data))).encode()


def timed(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        work()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    policies = {
        "no rules (none)": BodyRedactor(["none"], ()),
        "default fields": BodyRedactor((), ()),
        "defaults + 2 paths + card pattern": BodyRedactor(["applicant.income", "records.*.tags"], [CARD]),
    }
    print("| body | secrets | policy | redact() median / p99 µs |\n| --- | --- | --- | --- |")
    for size, label in ((1024, "1 KB"), (100 * 1024, "100 KB")):
        rounds = args.rounds if size < 65536 else max(20, args.rounds // 20)
        for secret in (False, True):
            data = body(size, secret)
            for name, policy in policies.items():
                median, p99 = timed(partial(policy.redact, data, b"application/json", "request"), rounds)
                print(f"| {label} | {'yes' if secret else 'no'} | {name} | {median:.1f} / {p99:.1f} |")
            median, p99 = timed(partial(naive, data), rounds)
            print(f"| {label} | {'yes' if secret else 'no'} | naive reference (recursive) | {median:.1f} / {p99:.1f} |")
    data = body(100 * 1024, True)
    redactor = policies["default fields"]

    def round_trip() -> None:
        with redactor.raw_file() as raw:
            for start in range(0, len(data), 65536):
                raw.write(data[start : start + 65536])
            raw.seek(0)
            raw.read()

    median, p99 = timed(round_trip, max(20, args.rounds // 20))
    print(f"\n100 KB through the private temporary file (64 KB writes, read back): {median:.1f} / {p99:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
