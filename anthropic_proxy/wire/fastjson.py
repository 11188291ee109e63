"""JSON on the proxy's hot paths (every stream event, every request body): orjson, several times faster than
the standard library, with the standard library as the fallback for what orjson gets wrong or refuses:
it reads an integer beyond 64 bits as a float (a number that long sends the input to the exact parser) and
cannot write one. `NaN` and `Infinity` are not JSON: both parsers refuse them (the standard library's would read
them as floats, which every JSON encoder then writes as `null`). Output is compact UTF-8, like
`json.dumps(..., ensure_ascii=False, separators=(",", ":"))`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A number of 20 digits or more may be beyond 64 bits. The digit-run check is C-speed (translate, then a substring
# search); only input that has such a run pays for the regex that asks whether it is a number (text like
# `: 123...` inside a string is taken for one too: the exact parser then reads it, correctly, only slower).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_ZEROS = b"0" * 20
_LONG_NUMBER = re.compile(rb"(?:^|[:\[,])\s*-?[0-9]{20}")


def loads(data: bytes | str) -> Any:
    """Raises ValueError (json.JSONDecodeError) for input that is not JSON, like json.loads."""
    value = loads_event(data)
    raw = data.encode() if isinstance(data, str) else data
    if _TWENTY_ZEROS in raw.translate(_DIGITS_AS_ZERO) and _LONG_NUMBER.search(raw) is not None:
        return json.loads(data, parse_constant=_not_json)
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def loads_event(data: bytes | str) -> Any:
    """A stream event's data: `loads` without its check for long numbers (a cost paid on every event). Events
    carry no integer beyond 64 bits outside a string: tool input streams as partial JSON *text*."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=_not_json)


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
