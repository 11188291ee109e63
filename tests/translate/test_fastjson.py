"""The hot-path JSON helpers keep what the standard library keeps (orjson alone would not)."""

from __future__ import annotations

import json

import pytest

from anthropic_proxy.wire import fastjson

BIG = 123456789012345678901234567890  # beyond 64 bits: orjson alone reads it as a float


@pytest.mark.parametrize("text", [f'{{"n": {BIG}}}', f'[{-BIG}, 18446744073709551616]', f'{{"n": {BIG}.5}}',
                                  f'{{"a": [1,\n {BIG}]}}'])
def test_integers_beyond_64_bits_stay_exact(text: str):
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == json.loads(text)
    assert type(fastjson.loads(text.encode())) is type(json.loads(text))
    assert fastjson.dumps(fastjson.loads(text)) == json.dumps(json.loads(text), separators=(",", ":")).encode()


def test_ordinary_input_and_bad_input():
    assert fastjson.loads(b'{"a": [1, 2.5, "12345678901234567890 in text"], "b": null}') == \
        {"a": [1, 2.5, "12345678901234567890 in text"], "b": None}
    with pytest.raises(ValueError):
        fastjson.loads(b"{not json")


def test_a_top_level_big_integer():
    assert fastjson.loads(str(BIG)) == BIG
    assert fastjson.loads(f" {-BIG}".encode()) == -BIG


def test_events_parse_like_bodies_and_refuse_what_is_not_json():
    event = (b'{"type":"content_block_delta","delta":{"type":"input_json_delta",'
             b'"partial_json":"{\\"n\\": 1234567890123456789012345"}}')
    assert fastjson.loads_event(event) == json.loads(event)
    with pytest.raises(ValueError):
        fastjson.loads_event("[DONE]")
