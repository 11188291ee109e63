"""Request bodies cut into content-addressed pieces, so a conversation's history is kept once, not once per turn.

Claude Code resends the whole conversation on every call (system, tools, every earlier message), so storing
each body whole costs turns x history: quadratic. `split()` cuts a record into

- a *skeleton*: the record's JSON with each piece replaced by `null` (so the body's key order is kept),
- *blobs*: the pieces, each as its canonical JSON text, addressed by `blob_id(text)`:
  `system` and `tools` (one blob each, when at least `MIN_BLOB` bytes) and every message;
- *chains*: each `messages` list as a chain of prefix nodes. Node i's id hashes node i-1's id and message i's
  blob id, so two lists that share their first k messages share their first k nodes, and a list is named by
  its last node. A new turn adds a node per new message, not a copy of the history.

The pieces come from two places in a record (`SLOTS`): the client's `request.body` and, in openrouter mode, the
translated `upstreamRequest` (an OpenAI chat body, whose history grows the same way).

`refs` says what was cut where: `{"request.body": {"system": <blob id>, "tools": <blob id>, "messages":
<node id>}, "upstreamRequest": {...}}`. `assemble()` puts the pieces back: the result is equal, value for
value and key for key, to the record that was cut (same `record_json`).

Canonical JSON: `json.dumps` with compact separators and ASCII escapes (the C encoder's fastest path; lossless),
then masked (`mask_text`). Ids are the first 32 hex digits of the SHA-256 of that text, so a blob's id can be
checked against its content (imports do). Masking one piece at a time masks exactly what masking the whole
record does: a key never spans two JSON values; the one pattern that could differ (a "Bearer" followed by
non-ASCII white space, which ASCII escaping hides from the pattern) is encoded without escapes instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.wire import fastjson

SLOTS: tuple[tuple[str, ...], ...] = (("request", "body"), ("upstreamRequest",))
BLOB_KEYS = ("system", "tools")  # cut out whole, when big enough
MESSAGES = "messages"
MIN_BLOB = 256  # smaller system/tools stay in the skeleton: a blob costs a row, an index entry and a reference

_ASCII = json.JSONEncoder(separators=(",", ":"))
_UNICODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def canonical(value: Any, *, mask: bool = True) -> str:
    """The masked, compact JSON text of a value: what is stored and what its id is computed over.
    `mask=False` checks a piece that was masked when it was cut (an import: masking may have grown since)."""
    text = _ASCII.encode(value)
    if "earer\\u" in text:  # "Bearer<non-ASCII space>token": let the mask see the real character
        unescaped = _UNICODE.encode(value)
        if unescaped.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == unescaped:  # no lone surrogate
            text = unescaped
    return mask_text(text) if mask else text


def blob_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def node_id(parent: str | None, blob: str) -> str:
    return hashlib.sha256(f"{parent or ''}:{blob}".encode()).hexdigest()[:32]


def slot_name(path: tuple[str, ...]) -> str:
    return ".".join(path)


@dataclass(slots=True)
class Split:
    skeleton: str  # the record's masked JSON, pieces replaced by null
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # slot -> key -> blob id or (messages) node id
    blobs: dict[str, str] = field(default_factory=dict)  # blob id -> canonical text
    # slot -> the messages chain, first message first: [(node id, parent node id, blob id)]
    chains: dict[str, list[tuple[str, str | None, str]]] = field(default_factory=dict)

    def ref_ids(self) -> set[str]:
        """Every blob and node this record refers to directly (what keeps them alive)."""
        return {ref for keys in self.refs.values() for ref in keys.values()}


def _slot_value(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def split(data: dict[str, Any]) -> Split:
    """Cut a record, as `record.model_dump(mode="json", by_alias=True)`, into skeleton, blobs and chains.

    `data` is changed in place (pieces replaced by None) and must not be used afterwards.
    """
    refs: dict[str, dict[str, str]] = {}
    blobs: dict[str, str] = {}
    chains: dict[str, list[tuple[str, str | None, str]]] = {}
    for path in SLOTS:
        body = _slot_value(data, path)
        if not isinstance(body, dict):
            continue
        name = slot_name(path)
        keys: dict[str, str] = {}
        for key in BLOB_KEYS:
            value = body.get(key)
            if value is None:
                continue
            text = canonical(value)
            if len(text) < MIN_BLOB:
                continue
            keys[key] = ref = blob_id(text)
            blobs[ref] = text
            body[key] = None
        messages = body.get(MESSAGES)
        if isinstance(messages, list) and messages:
            chain: list[tuple[str, str | None, str]] = []
            parent: str | None = None
            for message in messages:
                text = canonical(message)
                ref = blob_id(text)
                blobs[ref] = text
                node = node_id(parent, ref)
                chain.append((node, parent, ref))
                parent = node
            keys[MESSAGES] = parent  # type: ignore[assignment]
            chains[name] = chain
            body[MESSAGES] = None
        if keys:
            refs[name] = keys
    return Split(skeleton=skeleton_text(data), refs=refs, blobs=blobs, chains=chains)


def skeleton_text(value: dict[str, Any]) -> str:
    """The masked JSON text of what remains of a record: orjson's, several times faster than `canonical` on the
    hundreds of small objects of a stream's events (the skeleton is not content-addressed: its form is free), or
    `canonical` for what orjson refuses (a lone surrogate, an integer beyond 64 bits)."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        return canonical(value)
    return mask_text(text)


def assemble(skeleton: dict[str, Any], refs: dict[str, dict[str, str]], blob: Callable[[str], Any],
             messages: Callable[[str], list[Any]]) -> dict[str, Any]:
    """Put the pieces back into a parsed skeleton (in place; returned). `blob(id)` gives a piece's value,
    `messages(node id)` the message list that node ends."""
    for name, keys in refs.items():
        body = _slot_value(skeleton, tuple(name.split(".")))
        if not isinstance(body, dict):
            raise ValueError(f"stored record has no {name} for its pieces")
        for key, ref in keys.items():
            body[key] = messages(ref) if key == MESSAGES else blob(ref)
    return skeleton


def iter_texts(content: Any) -> Iterator[str]:
    """The text (and thinking) strings inside message content, nested tool results included."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                for key in ("text", "thinking"):
                    if isinstance(block.get(key), str):
                        yield block[key]
                if "content" in block:
                    yield from iter_texts(block["content"])


def new_turn(messages: list[Any]) -> list[Any]:
    """The messages a call adds to its conversation: the trailing run after the last assistant message that
    comes before a user message (a trailing assistant prefill stays with its turn). A first call: all of it."""
    seen_user = False
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        role = message.get("role") if isinstance(message, dict) else None
        if role == "assistant" and seen_user:
            return messages[index + 1:]
        if role == "user":
            seen_user = True
    return messages


def parse_body(body: bytes | None) -> Any:
    """A body as JSON when it is JSON, else as text: the record shows exactly what was sent."""
    if not body:
        return None
    try:
        return fastjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")
