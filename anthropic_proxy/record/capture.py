"""A capture: the raw facts of one API call as they passed the proxy, and nothing worked out from them.

The proxy keeps only these while a call runs and hands them on at its end: the request's bytes and masked headers,
where the call went (provider, model, the translated request, the route that matched, the failover relay's tries),
the response's status and masked headers, and either the whole response's bytes or the stream's log (each network
chunk's bytes and when it passed, for the client and, when translated, for the upstream), timings, how it ended,
and the two prices only the proxy can look up at the end (a provider's reported cost, the model catalogue's price).
What a record says of the call (outcome, message, usage, cost) is derived from these by `derive.to_record`, the one
place that does.

`encode` / `decode`: a compact, versioned, self-describing binary form (what crosses to the store's writer process):

    MAGIC (4 bytes) | version (1 byte) | header length (4 bytes, big-endian) | header | segments

The header is the facts as orjson (with each segment's length); the segments are the byte fields and the logs'
chunks, raw and in order, so no body or chunk is ever JSON-encoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from anthropic_proxy.record.model import Attempt
from anthropic_proxy.record.stream_log import StreamLog, log_size

MAGIC = b"APcp"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")  # magic, version, header length

EndKind = Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class Ending:
    """How a call ended: its response passed whole (`completed`), the client left (`cancelled`), or the upstream
    failed, stayed silent too long, or the proxy stopped (`failed`, with the error type the record gives it)."""

    kind: EndKind
    message: str | None = None
    error_type: str | None = None


@dataclass(slots=True)
class Capture:
    """The raw facts of one call (see the module's docstring). Filled by the exchange as the call goes; a capture
    whose `ending` is None is still running."""

    id: str
    started: float  # seconds since the epoch: when the request's first byte arrived
    method: str
    path: str
    request_headers: dict[str, str]  # masked
    request: bytes  # the client's body, as sent
    provider: str = "anthropic"
    upstream_model: str | None = None
    upstream_request: bytes | None = None  # the translated request's body, as sent upstream
    route_match: dict[str, Any] | None = None  # the route in config.json that matched: {"index", "when"}
    attempts: list[Attempt] = field(default_factory=list)  # the failover relay's tries, in order
    status: int | None = None  # the response's HTTP status, once its headers came
    response_headers: dict[str, str] = field(default_factory=dict)  # masked
    streamed: bool = False  # the answer passed as a stream, logged in `client_log`
    response: bytes | None = None  # a whole (not streamed) answer's bytes, as the client got them
    client_log: StreamLog = field(default_factory=list)  # the stream the client got
    upstream_log: StreamLog = field(default_factory=list)  # the upstream's stream, when it was translated
    upstream_response: bytes | None = None  # a provider's whole answer before translation
    ttfb_ms: float | None = None  # a whole answer's first byte (a stream's is its first event, read from its log)
    duration_ms: float | None = None
    ending: Ending | None = None
    reported_cost: float | None = None  # USD, as the provider reported it (OpenRouter's usage.cost)
    catalog_price: dict[str, Any] | None = None  # the model catalogue's price of the upstream model
    # The sizes as they passed, kept only where the bytes above are not those bytes (the journal masks keys)
    request_size: int | None = None
    response_size: int | None = None

    @property
    def request_bytes(self) -> int:
        """The size of the client's request as it passed."""
        return len(self.request) if self.request_size is None else self.request_size

    @property
    def response_bytes(self) -> int:
        """The size of the answer the client got as it passed: the stream's, or the whole answer's."""
        if self.response_size is not None:
            return self.response_size
        return log_size(self.client_log) if self.streamed else len(self.response or b"")

    def encode(self) -> bytes:
        """This capture as bytes (`decode` reads them). Safe while the call still runs: the logs are read once."""
        return b"".join(self.encode_parts())

    def encode_parts(self) -> list[bytes]:
        """`encode`'s bytes in pieces, not joined: the prefix and header, then the byte fields and chunks themselves
        (not copied: whoever writes them out copies them once, as the store's writer protocol does)."""
        client, upstream = list(self.client_log), list(self.upstream_log)
        fields = (self.request, self.upstream_request, self.response, self.upstream_response)
        ending = self.ending
        header = {
            "id": self.id, "started": self.started, "method": self.method, "path": self.path,
            "requestHeaders": self.request_headers, "provider": self.provider, "upstreamModel": self.upstream_model,
            "routeMatch": self.route_match,
            "attempts": [attempt.model_dump() for attempt in self.attempts] if self.attempts else None,
            "status": self.status, "responseHeaders": self.response_headers, "streamed": self.streamed,
            "ttfbMs": self.ttfb_ms, "durationMs": self.duration_ms,
            "ending": [ending.kind, ending.message, ending.error_type] if ending is not None else None,
            "reportedCost": self.reported_cost, "catalogPrice": self.catalog_price,
            "requestSize": self.request_size, "responseSize": self.response_size,
            "fields": [None if data is None else len(data) for data in fields],
            "clientLog": [[t_ms for t_ms, _ in client], [len(data) for _, data in client]],
            "upstreamLog": [[t_ms for t_ms, _ in upstream], [len(data) for _, data in upstream]],
        }
        head = orjson.dumps(header)
        return [_PREFIX.pack(MAGIC, VERSION, len(head)) + head, *(data for data in fields if data),
                *(data for _, data in client), *(data for _, data in upstream)]

    @staticmethod
    def header_of(data: bytes, start: int = 0) -> bytes:
        """The JSON header of the `encode` bytes that begin at `start` in `data`, as it is, unparsed (b"" for bytes
        that are not a capture). Only the header is copied."""
        if len(data) < start + _PREFIX.size:
            return b""
        magic, _version, size = _PREFIX.unpack_from(data, start)
        begin = start + _PREFIX.size
        return data[begin:begin + size] if magic == MAGIC else b""

    @classmethod
    def decode(cls, data: bytes) -> Capture:
        """A capture from `encode`'s bytes; ValueError for bytes that are not one (or of an unknown version)."""
        if len(data) < _PREFIX.size:
            raise ValueError("not a capture: too short")
        magic, version, size = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise ValueError("not a capture")
        if version != VERSION:
            raise ValueError(f"a capture of version {version}: this one reads version {VERSION}")
        start = _PREFIX.size
        header = orjson.loads(data[start:start + size])
        view, at = memoryview(data), start + size

        def take(length: int | None) -> bytes | None:
            nonlocal at
            if length is None:
                return None
            at += length
            return bytes(view[at - length:at])

        def log(times_and_sizes: list[list[Any]]) -> StreamLog:
            times, sizes = times_and_sizes
            return [(t_ms, take(length)) for t_ms, length in zip(times, sizes, strict=True)]  # type: ignore[misc]

        request, upstream_request, response, upstream_response = map(take, header["fields"])
        client, upstream = log(header["clientLog"]), log(header["upstreamLog"])
        if at != len(data):
            raise ValueError("not a capture: its segments do not add up")
        ending = header["ending"]
        return cls(
            id=header["id"], started=header["started"], method=header["method"], path=header["path"],
            request_headers=header["requestHeaders"], request=request or b"", provider=header["provider"],
            upstream_model=header["upstreamModel"], upstream_request=upstream_request,
            route_match=header["routeMatch"],
            attempts=[Attempt(**attempt) for attempt in header["attempts"] or ()],
            status=header["status"], response_headers=header["responseHeaders"], streamed=header["streamed"],
            response=response, client_log=client, upstream_log=upstream, upstream_response=upstream_response,
            ttfb_ms=header["ttfbMs"], duration_ms=header["durationMs"],
            ending=Ending(*ending) if ending is not None else None,
            reported_cost=header["reportedCost"], catalog_price=header["catalogPrice"],
            request_size=header.get("requestSize"), response_size=header.get("responseSize"))
