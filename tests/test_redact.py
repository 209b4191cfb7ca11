"""Query redaction (keys compared decoded and in any case, only their values rewritten) and body
redaction (field rules, patterns) on documents of any shape."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obsml._body_redaction import BodyRedactor
from obsml._field_rules import FieldRules
from obsml._redact import REDACTED_QUERY_KEYS, RedactionPolicy
from obsml._secrets import REDACTED

BUILT_IN = RedactionPolicy(())  # no extra headers or query keys


@pytest.mark.parametrize(
    ("query", "stored"),
    [
        pytest.param("sig=SECRET&limit=3", "sig=[REDACTED]&limit=3", id="plain-key"),
        pytest.param("%73ig=SECRET", "%73ig=[REDACTED]", id="percent-encoded-letter"),
        pytest.param("%53IG=SECRET&a=1", "%53IG=[REDACTED]&a=1", id="encoded-and-upper-case"),
        pytest.param("%53ignature=SECRET", "%53ignature=[REDACTED]", id="encoded-signature"),
        pytest.param("a=1&&SIG=SECRET&sig", "a=1&&SIG=[REDACTED]&sig", id="empty-fields-and-no-value-kept"),
        pytest.param("sig=SECRET&sig=SECRET2", "sig=[REDACTED]&sig=[REDACTED]", id="repeated-key"),
        pytest.param(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261130&X-Amz-Signature=SECRET",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]",
            id="aws-presigned",
        ),
        pytest.param(
            "token=SECRET&access_token=SECRET&api_key=SECRET&code=SECRET",
            "token=[REDACTED]&access_token=[REDACTED]&api_key=[REDACTED]&code=[REDACTED]",
            id="token-api-key-oauth-code",
        ),
        pytest.param("design=a/b%20c&flag", "design=a/b%20c&flag", id="sig-inside-a-word-untouched"),
        pytest.param("q=caf%C3%A9+au+lait&sort=-date", "q=caf%C3%A9+au+lait&sort=-date", id="encoded-values-untouched"),
        pytest.param("signal=on&x=%2F", "signal=on&x=%2F", id="longer-key-untouched"),
        pytest.param("si+g=1&si%20g=2", "si+g=1&si%20g=2", id="a-space-is-another-key"),
    ],
)
def test_credential_values_are_redacted_by_decoded_key_and_the_rest_kept_byte_for_byte(query: str, stored: str) -> None:
    assert BUILT_IN.query(query) == stored


# Near misses of the credential keys, and what a re-encoding would change (/, spaces, escapes).
pieces = st.sampled_from(["design", "signal", "codec", "tokens", "x-amz-date", "Sig", "si+g", "a", "/", "+", "%",
                          "%2F", "%20", "%73", "\u00e9", "[", "!", ""])
words = st.lists(pieces, max_size=4).map("".join)
queries = st.lists(st.one_of(words, st.tuples(words, words).map("=".join)), max_size=5).map("&".join)


@given(queries)
def test_a_query_without_a_credential_key_is_stored_byte_for_byte(query: str) -> None:
    keys = {key.lower() for key, _ in parse_qsl(query, keep_blank_values=True)}
    if not keys & REDACTED_QUERY_KEYS:
        assert BUILT_IN.query(query) == query


def spelled(key: str) -> st.SearchStrategy[str]:
    """``key`` as a client may send it: each character as it is, in upper case, or percent-encoded."""
    return st.tuples(*(st.sampled_from([c, c.upper(), f"%{ord(c):02X}", f"%{ord(c):02x}"]) for c in key)).map(
        "".join
    )


@given(
    key=st.sampled_from(sorted(REDACTED_QUERY_KEYS)).flatmap(spelled),
    before=st.sampled_from(["", "design=a/b%20c&", "q=caf%C3%A9+x&flag&"]),
    after=st.sampled_from(["", "&limit=3", "&&x=%2F"]),
)
def test_a_credential_key_however_spelled_loses_its_value_and_nothing_else(key: str, before: str, after: str) -> None:
    query = f"{before}{key}=CANARY-secret{after}"
    assert BUILT_IN.query(query) == f"{before}{key}=[REDACTED]{after}"


# Body redaction (issue 15): field rules, patterns, documents of any shape.

SECRET_KEYS = ["password", "Password", "API-Key", "api_key", "x-api-key", "db_password", "accessToken",
               "client_secret", "SSN", "credit_card", "cvv", "iban", "Authorization", "refresh_token", "auth"]
# Near misses that must keep their values: LLM token counts, authors, a key that only starts like one.
SAFE_KEYS = ["name", "age", "tokens", "total_tokens", "author", "authors", "pass", "password_hint", "items", "a"]
DEFAULTS = BodyRedactor((), ())


def reference(document: Any) -> Any:
    """The naive redaction the fast walk must agree with: every value under a secret key replaced."""
    if isinstance(document, dict):
        return {k: REDACTED if k in SECRET_KEYS else reference(v) for k, v in document.items()}
    if isinstance(document, list):
        return [reference(v) for v in document]
    return document


leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                   st.text(max_size=8), st.just("CANARY-secret"))
documents = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(SECRET_KEYS + SAFE_KEYS), children, max_size=5),
    ),
    max_leaves=40,
)


@given(documents)
def test_secret_keys_at_any_depth_lose_their_values_and_nothing_else_changes(document: Any) -> None:
    data = json.dumps(document).encode()
    stored = DEFAULTS.redact(data, b"application/json", "request")
    assert stored is not None
    assert json.loads(stored.data) == reference(document)
    if stored.replaced == 0:
        assert stored.data == data  # nothing to redact: byte-exact
    if "CANARY" not in json.dumps(reference(document)):
        assert b"CANARY" not in stored.data


@given(st.lists(documents, min_size=1, max_size=5))
def test_each_json_line_is_redacted_and_unchanged_lines_keep_their_bytes(lines: list[Any]) -> None:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    stored = DEFAULTS.redact(data, b"application/x-ndjson", "request")
    assert stored is not None
    assert [json.loads(line) for line in stored.data.splitlines()] == [reference(line) for line in lines]
    for raw, kept in zip(data.splitlines(), stored.data.splitlines(), strict=True):
        if json.loads(raw) == reference(json.loads(raw)):
            assert kept == raw


@given(st.lists(st.tuples(st.sampled_from(SECRET_KEYS + SAFE_KEYS), st.text(max_size=8)), max_size=6))
def test_form_fields_named_as_secrets_lose_their_values(pairs: list[tuple[str, str]]) -> None:
    stored = DEFAULTS.redact(urlencode(pairs).encode(), b"application/x-www-form-urlencoded", "request")
    assert stored is not None
    assert parse_qsl(stored.data.decode(), keep_blank_values=True) == [
        (k, REDACTED if k in SECRET_KEYS else v) for k, v in pairs
    ]


@pytest.mark.parametrize(
    ("fields", "document", "redacted"),
    [
        pytest.param("applicant.ssn", {"applicant": {"SSN": 1, "n": 2}, "ssn": 3},
                     {"applicant": {"SSN": "*"}, "ssn": "*"}, id="dotted-path-and-default-name"),
        pytest.param("none,applicant.ssn", {"applicant": {"ssn": 1}, "ssn": 3, "password": 4},
                     {"applicant": {"ssn": "*"}, "ssn": 3, "password": 4}, id="none-turns-the-defaults-off"),
        pytest.param("items.*.card", {"items": [{"card": 1, "n": 2}, {"card": 3}], "card": 4},
                     {"items": [{"card": "*", "n": 2}, {"card": "*"}], "card": 4}, id="wildcard-over-a-list"),
        pytest.param("Customer_Email", {"customer-email": "a@b", "a": {"customerEmail": "c@d"}},
                     {"customer-email": "*", "a": {"customerEmail": "*"}}, id="names-compared-normalized"),
    ],
)
def test_field_rules(fields: str, document: dict[str, Any], redacted: dict[str, Any]) -> None:
    def expected(original: Any, marks: Any) -> Any:
        if marks == "*":
            return REDACTED
        if isinstance(original, dict):
            return {k: expected(v, marks.get(k) if isinstance(marks, dict) else None) for k, v in original.items()}
        if isinstance(original, list):
            return [expected(v, m) for v, m in zip(original, marks or [None] * len(original), strict=True)]
        return original

    stored = BodyRedactor(fields.split(","), ()).redact(json.dumps(document).encode(), b"application/json", "r")
    assert stored is not None
    assert json.loads(stored.data) == expected(document, redacted)


def test_a_repeated_key_never_keeps_the_value_it_shadows() -> None:
    data = b'{"a": {"password": "CANARY-shadowed"}, "a": 1}'  # a parser keeps only the last "a"
    stored = DEFAULTS.redact(data, b"application/json", "request")
    assert stored is not None and b"CANARY" not in stored.data


def test_patterns_run_in_linear_time_so_a_catastrophic_one_is_harmless() -> None:
    # Under Python's re, (a+)+$ against "aaa...ab" takes 2**n steps (decades for n = 100,000);
    # RE2 has no backtracking, so this returns (nothing matches: the text is kept byte-exact).
    redactor = BodyRedactor(["none"], [r"(a+)+$"])
    text = b"a" * 100_000 + b"b"
    assert redactor.redact(text, b"text/plain", "request") == (text, 0, (), False)


def test_body_field_names_apply_to_query_keys_on_top_of_the_signed_url_keys() -> None:
    policy = RedactionPolicy((), fields=FieldRules(["customer_email"]))
    query = "Password=a&tokens=3&customer-email=x%40y&sig=s&author=me"
    assert policy.query(query) == "Password=[REDACTED]&tokens=3&customer-email=[REDACTED]&sig=[REDACTED]&author=me"


def test_raw_bodies_wait_in_private_files_without_a_name(tmp_path: Path) -> None:
    redactor = BodyRedactor((), (), raw_dir=tmp_path / "spool" / "raw")
    with redactor.raw_file() as raw:
        raw.write(b'{"password": "CANARY"}')
        assert stat.S_IMODE(os.fstat(raw.fileno()).st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "spool" / "raw").stat().st_mode) == 0o700
        assert list((tmp_path / "spool" / "raw").iterdir()) == []  # a crash leaves nothing to find


def test_the_folder_of_raw_bodies_is_made_again_when_a_cleaner_removed_it(tmp_path: Path) -> None:
    # It is made once, not looked up per body (issue 16); a cleaner of temporary folders may remove it.
    folder = tmp_path / "spool" / "raw"
    redactor = BodyRedactor((), (), raw_dir=folder)
    redactor.raw_file().close()
    folder.rmdir()
    with redactor.raw_file() as raw:
        raw.write(b"{}")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_multipart_upload_loses_the_values_of_secret_fields_and_keeps_every_other_byte() -> None:
    head = b'--b\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nCANARY\r\n'
    text = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\ncard 4111 1111 1111 1234\r\n'
    file = b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n\xff\x00api_key=1\r\n--b--\r\n'
    stored = BodyRedactor((), [r"\b(?:\d{4}[ -]?){3}\d{4}\b"]).redact(
        head + text + file, b'multipart/form-data; boundary="b"', "request"
    )
    assert stored == (
        head.replace(b"CANARY", REDACTED.encode()) + text.replace(b"4111 1111 1111 1234", REDACTED.encode()) + file,
        2, ("api_key", "note"), True,
    )


ECHO = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param([(b"host", b"a:1"), (b"user-agent", b"ua/1"), (b"content-type", b"application/json")], id="plain"),
        pytest.param([(b"host", b"a"), (b"authorization", b"Bearer SECRET")], id="redacted-after-a-plain-one"),
        pytest.param([(b"accept", b"a"), (b"Accept", b"b"), (b"accept", b"c")], id="repeated-names"),
        pytest.param([(b"x-correlation-id", ECHO), (b"server", b"s")], id="the-echoed-id"),
        pytest.param([(b"x-correlation-id", b"not an id!"), (b"server", b"s")], id="a-rejected-id"),
        pytest.param([(b"x-correlation-id", ECHO + b"," + ECHO)], id="an-id-list"),
        pytest.param([(b"host", b"h"), (b"x-long", b"v" * 9000)], id="a-value-cut"),
        pytest.param([(b"x" * 300, b"v"), (b"host", b"h")], id="a-name-too-long"),
        pytest.param([(f"x-{i:03d}".encode(), b"v") for i in range(70)], id="more-names-than-recorded"),
        pytest.param([(b"accept", b"a")] * 20, id="more-values-than-recorded"),
        pytest.param([], id="none"),
    ],
)
def test_header_attributes_are_the_same_once_their_names_are_known(pairs: list[tuple[bytes, bytes]]) -> None:
    # The first call learns the names (full path), the second takes the common case's path where it can.
    policy = RedactionPolicy((), ("x-correlation-id",))
    first: dict[str, Any] = {}
    agent = policy.header_attributes("response", pairs, first, ECHO)
    again: dict[str, Any] = {}
    assert policy.header_attributes("response", pairs, again, ECHO) == agent
    reference: dict[str, Any] = {}
    assert policy._all_header_attributes("response", pairs, reference, ECHO) == agent
    assert list(again.items()) == list(first.items()) == list(reference.items())


@pytest.mark.parametrize(
    ("body", "media"),
    [
        pytest.param(b'{"id":7,"note":"' + b"x" * 1000 + b'"}', b"application/json", id="long-value"),
        pytest.param(json.dumps([{"age": i, "city": "Paris"} for i in range(40)]).encode(), None, id="records-no-type"),
        pytest.param(b'{"a":1}\n{"b":2}\n', b"application/x-ndjson", id="json-lines"),
        pytest.param(b'{"max_tokens": 2, "author": "password"}', b"application/json", id="near-misses"),
        pytest.param(b'{"User_PASS-word":"CANARY"}', b"application/json", id="separators-and-case"),
        pytest.param(b'{"db . Token" :"CANARY"}', b"application/json", id="suffix-after-spaces"),
        pytest.param(b'{"password"\n:"CANARY"}', b"application/json", id="newline-before-the-colon"),
        pytest.param(b'{"\\u0070assword":"CANARY"}', b"application/json", id="escaped-name"),
        pytest.param('{"secret":"CANARY"}'.encode("utf-16-le"), b"application/json", id="utf-16"),
        pytest.param(b'{"note":"' + b"x" * 4000 + b'","db-Pass_word" :"CANARY"}', None, id="after-a-long-value"),
        pytest.param(b'{"a":1,"a":2}', b"application/json", id="repeated-key"),
        pytest.param(b'{"a":', b"application/json", id="broken"),
        pytest.param(b'password=CANARY', b"application/x-www-form-urlencoded", id="form"),
        pytest.param(b"", b"application/json", id="empty"),
    ],
)
def test_a_body_is_stored_as_is_only_when_redaction_would_return_it_unchanged(body: bytes, media: bytes | None) -> None:
    redactor = BodyRedactor([], [])
    if redactor.stored_as_is(body, media):  # the shortcut the writer takes for inline bodies
        assert redactor.redact(body, media, "request") == (body, 0, (), False)
    if b"CANARY" in body and not body.endswith(b"{"):
        assert not redactor.stored_as_is(body, media)


def test_an_escaped_field_name_is_never_stored_as_is_and_is_redacted() -> None:
    redactor = BodyRedactor([], [])
    body = b'{"x":1,"p\\u0061ss_word":"CANARY"}'
    assert not redactor.stored_as_is(body, b"application/json")
    result = redactor.redact(body, b"application/json", "request")
    assert result is not None and b"CANARY" not in result.data and result.paths == ("pass_word",)
