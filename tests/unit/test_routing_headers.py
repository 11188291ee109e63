"""The Router rewrites headers in one pass: the same headers, in the same places, as mitmproxy's own operations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from anthropic_proxy.addons.routing import _headers, _replaced, header_pairs

NAMES = [b"Content-Length", b"content-encoding", b"Content-Type", b"cache-control", b"transfer-encoding", b"x-a",
         b"X-Ratelimit-Remaining", b"date"]
FIELDS = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([b"1", b"gzip", b"text/plain", b"v"])),
                  max_size=12)


@given(FIELDS, st.booleans())
def test_replaced_is_what_pop_and_set_leave(fields, chunked):
    replace: dict[bytes, bytes | None] = {b"content-length": None, b"content-encoding": None,
                                          b"content-type": b"text/event-stream", b"cache-control": b"no-cache"}
    if chunked:
        replace[b"transfer-encoding"] = b"chunked"
    reference = http.Headers(fields)
    for name, value in replace.items():
        if value is None:
            reference.pop(name.decode(), None)
        else:
            reference[name.decode()] = value.decode()
    assert _replaced(http.Headers(fields), replace).fields == reference.fields


def test_headers_keep_every_pair_in_order_with_any_bytes():
    pairs = [("content-type", "application/json"), ("x-title", "caf\xe9 \udcff"), ("X-Dup", "1"), ("x-dup", "2")]
    reference = http.Headers()
    for name, value in pairs:
        reference.add(name, value)
    assert _headers(pairs).fields == reference.fields
    assert list(_headers(pairs).items(multi=True)) == pairs


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=8)), max_size=12))
def test_header_pairs_are_mitmproxys_own_reading(fields):
    """Each field as mitmproxy reads it (`items(multi=True)`): repeated names, their order, bytes that are not UTF-8."""
    headers = http.Headers(fields)
    assert header_pairs(headers) == list(headers.items(multi=True))
