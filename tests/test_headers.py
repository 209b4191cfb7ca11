"""The request-path header work both adapters share: one slot scanner, one correlation-id echo."""

from __future__ import annotations

from obsml._headers import HeaderSlots, echo_correlation_id


def test_raw_pairs_and_an_environ_fill_the_same_slots_a_name_in_two_slots_filling_both() -> None:
    slots = HeaderSlots(("x-request-id", "traceparent"))  # traceparent also as a correlation header
    parent = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    pairs = [(b"traceparent", parent), (b"content-type", b"text/csv"), (b"x-request-id", b"a"), (b"x-request-id", b"b")]
    environ = {"HTTP_TRACEPARENT": parent.decode(), "CONTENT_TYPE": "text/csv", "HTTP_X_REQUEST_ID": "a"}
    expected = [b"a", parent, parent, None, b"text/csv", None]  # first occurrence of each name
    assert slots.scan_pairs(pairs)[0] == slots.scan_environ(environ)[0] == expected
    assert (slots.traceparent, slots.tracestate, slots.content_type, slots.content_length) == (2, 3, 4, 5)


def test_the_correlation_id_is_appended_to_a_copy_unless_the_app_set_its_own() -> None:
    app_headers = [("Content-Type", "text/plain")]
    sent, held, appended = echo_correlation_id(app_headers, "x-correlation-id", "c-1")
    assert (sent, appended) == ([("Content-Type", "text/plain"), ("x-correlation-id", "c-1")], True)
    assert app_headers == [("Content-Type", "text/plain")] and held > len("Content-Typetext/plain")
    own = [(b"X-Correlation-ID", b"the-app's")]
    assert echo_correlation_id(own, b"x-correlation-id", b"c-2")[::2] == (own, False)
