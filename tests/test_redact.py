"""Query redaction: keys compared decoded and in any case, only their values rewritten."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obsml._redact import REDACTED_QUERY_KEYS, RedactionPolicy

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
