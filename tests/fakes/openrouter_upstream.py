"""A fake OpenRouter API (aiohttp) for the openrouter-mode integration tests.

Like `FakeAnthropic`, it runs on an ephemeral 127.0.0.1 port in a background thread with its own event
loop, so the synchronous SDK tests can use it:

    with FakeOpenRouter(keys={"sk-or-v1-..."}) as fake:
        ...  # start the proxy with --set openrouter_base_url=<fake.base_url>
        ex = fake.wait_for(lambda ex: ex.user == tag)
        ex.json()          # the chat/completions body the proxy sent
        ex.sent            # the exact bytes answered

Endpoints (under /api/v1):
- `POST /chat/completions`: checks `Authorization: Bearer <key>` (401 otherwise), validates the body the way
  OpenAI does (400 with a clear message, in OpenRouter's error shape), then answers from a recording in
  tests/data/openrouter (byte-for-byte: comment lines, reasoning, tool-call fragments, finish_reason twice,
  usage last, [DONE]). Streams go out in several writes with small delays, split at awkward points (in the
  middle of lines and of multi-byte UTF-8 characters, several events in one write).
- `GET /models`: a small model list with context_length and pricing (OpenRouter's shape), with several
  generations of each Claude family.
- `GET /key`: 200 with the key's info for a known key, 401 otherwise.

What a chat/completions call answers is chosen, in order, by the header `x-fake-recording` (the proxy sends
configured extra headers), else by the model name:
- `fake/<recording>`: replay `<recording>` (a path under tests/data/openrouter without its extension, e.g.
  `TestOpenRouterThinking/anthropic/thinking.0`; a path not starting with `Test` is under
  `TestOpenRouterCommon/`, e.g. `glm/tool_streaming.0`). The `stream` flag picks `.response.sse.txt` or
  `.response.json`.
- `fake/hold/<hold_id>/<recording>`: a streamed recording that stops after its first data event carrying
  content until `fake.release(hold_id)` (or 10 s).
- `fake/error/<status>`: a pre-stream error in OpenRouter's shape (429 and 503 carry `Retry-After`).
- `fake/gzip/<recording>`: a non-streamed recording sent gzip-compressed whatever the request accepted.
- `fake/midstream_error`: tests/data/openrouter_errors/midstream_error.sse.txt (HTTP 200, then an error chunk).
- `fake/malformed`: a good first chunk, then a chunk whose `delta` is a string (breaks a translator).
- `fake/truncated`: a few chunks, then the body ends cleanly without finish_reason or [DONE].
- a real model id that has recordings (e.g. `anthropic/claude-haiku-4.5`): simple/tool, turn .0/.1 and
  streaming or not are chosen from the request itself.

Every request is kept as an `Exchange` (headers in order, body bytes, the answer and its writes); tests find
theirs by `ex.user` (the proxy turns Anthropic `metadata.user_id` into OpenAI `user`).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .server import FakeServer

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
RECORDINGS_DIR = DATA_DIR / "openrouter"
ERRORS_DIR = DATA_DIR / "openrouter_errors"
API_PREFIX = "/api/v1"
DEFAULT_KEY = "sk-or-v1-" + "fakeOpenRouterKey" + "0123456789abcdef" * 3
HOLD_TIMEOUT = 10.0

MODELS = [
    {"id": "anthropic/claude-haiku-4.5", "name": "Anthropic: Claude Haiku 4.5", "context_length": 200000,
     "pricing": {"prompt": "0.000001", "completion": "0.000005", "input_cache_read": "0.0000001",
                 "input_cache_write": "0.00000125"}},
    # Older and newer Claude models of each family, in both of OpenRouter's namings, and a variant: the family
    # defaults follow the newest (sonnet-5, opus-4.8, haiku-4.5).
    *({"id": model_id, "name": model_id, "context_length": 200000, "pricing": {"prompt": "0.000003",
                                                                             "completion": "0.000015"}}
      for model_id in ("anthropic/claude-3.7-sonnet", "anthropic/claude-sonnet-4.5", "anthropic/claude-sonnet-5",
                       "anthropic/claude-3-opus-20240229", "anthropic/claude-opus-4.5", "anthropic/claude-opus-4.8",
                       "anthropic/claude-opus-4.8:thinking")),
    {"id": "z-ai/glm-5-turbo", "name": "Z.AI: GLM 5 Turbo", "context_length": 131072,
     "pricing": {"prompt": "0.0000006", "completion": "0.0000022"}},
    {"id": "google/gemini-3.1-flash-lite-preview", "name": "Google: Gemini 3.1 Flash Lite Preview",
     "context_length": 1048576, "pricing": {"prompt": "0.0000001", "completion": "0.0000004"}},
]

# Pre-stream errors: OpenRouter's documented shape {"error": {"code", "message", "metadata"?}}.
ERROR_MESSAGES = {
    400: "Invalid model specified",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Your input was flagged by moderation",
    408: "Request timed out",
    413: "Request entity too large",
    429: "Rate limit exceeded: free-models-per-min",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available provider could serve this request",
}
ERROR_METADATA = {
    403: {"reasons": ["harassment"], "flagged_input": "…", "provider_name": "OpenAI", "model_slug": "gpt-x"},
    502: {"provider_name": "Amazon Bedrock", "raw": "upstream connect error"},
}
RETRY_AFTER = {429: "7", 503: "3"}

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = ("system", "developer", "user", "assistant", "tool")
_REASONING_TYPES = ("reasoning.text", "reasoning.summary", "reasoning.encrypted")


class InvalidRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class Exchange:
    seq: int
    method: str
    path: str
    raw_headers: list[tuple[str, str]]
    body: bytes
    received_at: float
    recording: str | None = None  # what answered it
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)
    writes: list[tuple[float, bytes]] = field(default_factory=list)
    completed: bool = False
    error: str | None = None  # the validation message when the fake refused the request
    client_disconnected: bool = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.raw_headers if k.lower() == name), None)

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.raw_headers}

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def user(self) -> str | None:
        try:
            body = self.json()
        except ValueError:
            return None
        return body.get("user") if isinstance(body, dict) else None


async def receive(server: FakeServer, request: web.Request) -> Exchange:
    """Read the request whole and keep it as the server's next exchange (the fakes that speak chat completions)."""
    ex = Exchange(seq=next(server._seq), method=request.method, path=request.path,
                  raw_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
                  body=await request.read(), received_at=time.monotonic())
    with server._lock:
        server.exchanges.append(ex)
    return ex


# ---- recordings --------------------------------------------------------------------------------------------
def recording_path(name: str, stream: bool) -> Path:
    if not name.startswith("Test"):
        name = f"TestOpenRouterCommon/{name}"
    return RECORDINGS_DIR / f"{name}.response.{'sse.txt' if stream else 'json'}"


def load_recording(name: str, stream: bool) -> bytes:
    return recording_path(name, stream).read_bytes()


def recorded_events(raw: bytes) -> list[Any]:
    """The `data:` payloads of a recorded stream, parsed (`[DONE]` stays a string), comments skipped."""
    out: list[Any] = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def awkward_writes(raw: bytes) -> list[bytes]:
    """Split a recorded stream into network writes at awkward points; they join back to `raw` exactly.

    Per event: a cut inside its first multi-byte UTF-8 character, a cut in the middle of every third event's
    data line, and every fourth event shares its write with the next one.
    """
    events = [e + b"\n\n" for e in raw.split(b"\n\n")]
    events[-1] = events[-1][:-2]  # split() consumed no separator after the last piece
    writes: list[bytes] = []
    carry = b""
    for i, event in enumerate(events):
        if not event:
            continue
        pieces = [event]
        multibyte = next((j for j, b in enumerate(event) if b >= 0xC0), None)  # a UTF-8 lead byte
        if multibyte is not None:
            pieces = [event[:multibyte + 1], event[multibyte + 1:]]
        elif i % 3 == 1 and len(event) > 20:
            pieces = [event[:len(event) // 2], event[len(event) // 2:]]
        pieces[0] = carry + pieces[0]
        carry = b""
        if i % 4 == 3 and i != len(events) - 1:
            carry = pieces.pop()
        writes.extend(pieces)
    if carry:
        writes.append(carry)
    assert b"".join(writes) == raw, "awkward_writes must not change a byte"
    return [w for w in writes if w]


def _recordings_of_model(model: str) -> list[str]:
    index = json.loads((RECORDINGS_DIR / "index.json").read_text())
    return [entry["file"] for entry in index if entry["model"] == model]


def auto_recording(model: str, body: dict[str, Any]) -> str | None:
    """For a real model id: the recording whose request looks like this one (tools? after a tool result?)."""
    files = _recordings_of_model(model)
    if not files:
        return None
    stream = body.get("stream") is True
    kind = "tool" if body.get("tools") else "simple"
    turn = 1 if any(m.get("role") == "tool" for m in body["messages"]) else 0
    case = f"{kind}_streaming" if stream else kind
    for file in files:
        if file.endswith(f"/{case}.{turn}") and recording_path(file, stream).is_file():
            return file
    return None


# ---- OpenAI-style validation -------------------------------------------------------------------------------
def _check_content_parts(content: Any, where: str, *, allow_images: bool) -> None:
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{where}.content': expected a string or an array of parts")
    if not content:
        raise InvalidRequest(f"Invalid '{where}.content': empty array. Expected at least one content part")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"Invalid type for '{where}.content[{j}].text': expected a string")
        elif kind == "image_url" and allow_images:
            if not isinstance(part.get("image_url"), dict) or not part["image_url"].get("url"):
                raise InvalidRequest(f"Missing required parameter: '{where}.content[{j}].image_url.url'")
        else:
            raise InvalidRequest(f"Invalid value for '{where}.content[{j}].type': {kind!r} is not supported here")


def validate_chat_request(body: Any) -> None:
    """Reject what OpenAI's chat/completions rejects (the rules a translated Claude Code request can break)."""
    if not isinstance(body, dict):
        raise InvalidRequest("Invalid request body: expected a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model'")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("Invalid type for 'messages': expected an array")
    if not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum length 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("Invalid type for 'stream': expected a boolean")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidRequest("Invalid 'max_tokens': expected an integer >= 1")

    tool_names: set[str] = set()
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("Invalid type for 'tools': expected an array")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                raise InvalidRequest(f"Invalid 'tools[{i}]': expected a function tool")
            name = function.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise InvalidRequest(f"Invalid 'tools[{i}].function.name': string does not match pattern "
                                     "'^[a-zA-Z0-9_-]{1,64}$'")
            if "parameters" in function and not isinstance(function["parameters"], dict):
                raise InvalidRequest(f"Invalid type for 'tools[{i}].function.parameters': expected an object")
            tool_names.add(name)

    if "tool_choice" in body:
        choice = body["tool_choice"]
        if not tools:
            raise InvalidRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                                 "are specified")
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise InvalidRequest(f"Invalid value for 'tool_choice': {choice!r}. Supported values are: 'none', "
                                     "'auto' and 'required'")
        elif isinstance(choice, dict) and choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            if name not in tool_names:
                raise InvalidRequest(f"Invalid value for 'tool_choice': no function named {name!r} was specified "
                                     "in the 'tools' parameter")
        else:
            raise InvalidRequest(f"Invalid value for 'tool_choice': {json.dumps(choice)}")

    pending: list[str] = []  # tool_call ids of the last assistant message still waiting for their tool message
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid type for '{where}': expected an object")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(f"Invalid value for '{where}.role': {role!r}")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                raise InvalidRequest(f"Invalid parameter: messages with role 'tool' must be a response to a "
                                     f"preceding message with 'tool_calls' ({where}, tool_call_id {call_id!r})")
            pending.remove(call_id)
            content = message.get("content")
            if not isinstance(content, str):
                _check_content_parts(content, where, allow_images=False)
            continue
        if pending:
            raise InvalidRequest(f"An assistant message with 'tool_calls' must be followed by tool messages "
                                 f"responding to each 'tool_call_id'. The following tool_call_ids did not have "
                                 f"response messages: {', '.join(pending)}")
        content = message.get("content")
        if role in ("user", "system", "developer"):
            if isinstance(content, str):
                if role == "user" and not content:
                    raise InvalidRequest(f"Invalid '{where}.content': a user message must not be empty")
            else:
                _check_content_parts(content, where, allow_images=role == "user")
                if role == "user" and all(p.get("type") == "text" and not p["text"] for p in content):
                    raise InvalidRequest(f"Invalid '{where}.content': a user message must not be empty")
            continue
        # assistant
        calls = message.get("tool_calls")
        if calls is not None and (not isinstance(calls, list) or not calls):
            raise InvalidRequest(f"Invalid '{where}.tool_calls': expected a non-empty array")
        if content is None and not calls:
            raise InvalidRequest(f"Invalid '{where}': an assistant message needs 'content' or 'tool_calls'")
        if content is not None and not isinstance(content, str):
            _check_content_parts(content, where, allow_images=False)
        for j, call in enumerate(calls or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(call, dict) or call.get("type") != "function" or not isinstance(function, dict):
                raise InvalidRequest(f"Invalid '{where}.tool_calls[{j}]': expected a function call")
            if not isinstance(call.get("id"), str) or not call["id"]:
                raise InvalidRequest(f"Missing required parameter: '{where}.tool_calls[{j}].id'")
            if not isinstance(function.get("name"), str) or not _TOOL_NAME.match(function["name"]):
                raise InvalidRequest(f"Invalid '{where}.tool_calls[{j}].function.name'")
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                raise InvalidRequest(f"Invalid type for '{where}.tool_calls[{j}].function.arguments': expected a "
                                     "string")
            try:
                json.loads(arguments)
            except ValueError:
                raise InvalidRequest(f"Invalid '{where}.tool_calls[{j}].function.arguments': not valid JSON") \
                    from None
            pending.append(call["id"])
        details = message.get("reasoning_details")
        if details is not None and (not isinstance(details, list) or not all(
                isinstance(d, dict) and d.get("type") in _REASONING_TYPES for d in details)):
            raise InvalidRequest(f"Invalid '{where}.reasoning_details': expected reasoning detail objects")
    if pending:
        raise InvalidRequest("An assistant message with 'tool_calls' must be followed by tool messages responding "
                             f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                             f"{', '.join(pending)}")


def error_body(status: int, message: str, metadata: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        error["metadata"] = metadata
    return json.dumps({"error": error, "user_id": "user_fake"}).encode()


# ---- the server --------------------------------------------------------------------------------------------
class FakeOpenRouter(FakeServer):
    name = "fake OpenRouter"

    def __init__(self, host: str = "127.0.0.1", keys: set[str] | None = None, write_delay: float = 0.002) -> None:
        super().__init__(host)
        self.keys: set[str] = set(keys) if keys is not None else {DEFAULT_KEY}
        self.write_delay = write_delay

    @property
    def base_url(self) -> str:
        """What the proxy's `openrouter_base_url` option is set to."""
        return self.url + API_PREFIX

    # ---- inspection ----------------------------------------------------------------------------------------
    def by_user(self, user: str) -> list[Exchange]:
        """chat/completions calls whose body carried `user: <user>` (Anthropic metadata.user_id)."""
        return self.find(lambda ex: ex.path.endswith("/chat/completions") and ex.user == user)

    def calls_to(self, path: str) -> list[Exchange]:
        return self.find(lambda ex: ex.path == API_PREFIX + path)

    def _describe(self, ex: Exchange) -> Any:
        return (ex.method, ex.path, ex.recording)

    # ---- handler -------------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ex = await receive(self, request)
        try:
            if request.method == "GET" and request.path == API_PREFIX + "/models":
                return self._json(ex, 200, {"data": MODELS})
            if request.method == "GET" and request.path == API_PREFIX + "/key":
                return self._key(ex)
            if request.method == "POST" and request.path == API_PREFIX + "/chat/completions":
                return await self._chat(request, ex)
            return self._error(ex, 404, f"Not found: {request.method} {request.path}")
        finally:
            ex.completed = ex.completed or not ex.writes

    def _authorized(self, ex: Exchange) -> bool:
        auth = ex.header("authorization") or ""
        return auth.startswith("Bearer ") and auth[7:] in self.keys

    def _key(self, ex: Exchange) -> web.Response:
        if not self._authorized(ex):
            return self._error(ex, 401, "User not found.")
        key = (ex.header("authorization") or "")[7:]
        return self._json(ex, 200, {"data": {"label": f"{key[:12]}...{key[-3:]}", "usage": 0.25, "limit": 10,
                                             "is_free_tier": False, "limit_remaining": 9.75}})

    def _json(self, ex: Exchange, status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"content-type": "application/json", **(headers or {})}
        ex.status, ex.response_headers = status, list(headers.items())
        ex.sent += data
        return web.Response(status=status, body=data, headers=headers)

    def _error(self, ex: Exchange, status: int, message: str, metadata: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        ex.error = message
        return self._json(ex, status, error_body(status, message, metadata), headers)

    async def _chat(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        if not self._authorized(ex):
            return self._error(ex, 401, "No auth credentials found")
        try:
            body = json.loads(ex.body)
        except ValueError:
            return self._error(ex, 400, "Invalid JSON in request body")
        try:
            validate_chat_request(body)
        except InvalidRequest as exc:
            return self._error(ex, exc.status, exc.message)
        stream = body.get("stream") is True
        target = ex.header("x-fake-recording") or body["model"]
        if not target.startswith("fake/"):
            found = auto_recording(target, body)
            if found is None:
                return self._error(ex, 400, f"{target} is not a valid model ID")
            target = f"fake/{found}"
        name = target.removeprefix("fake/")
        ex.recording = name
        if name.startswith("error/"):
            status = int(name.split("/")[1])
            retry = RETRY_AFTER.get(status)
            return self._error(ex, status, ERROR_MESSAGES.get(status, f"HTTP {status}"), ERROR_METADATA.get(status),
                               {"Retry-After": retry} if retry else None)
        if name == "midstream_error":
            return await self._stream(request, ex, (ERRORS_DIR / "midstream_error.sse.txt").read_bytes())
        if name == "malformed":
            return await self._stream(request, ex, self._malformed())
        if name == "truncated":
            raw = load_recording("anthropic/simple_streaming.0", True)
            return await self._stream(request, ex, b"\n\n".join(raw.split(b"\n\n")[:3]) + b"\n\n")
        compress = name.startswith("gzip/")
        name = name.removeprefix("gzip/")
        hold_id = None
        if name.startswith("hold/"):
            _, hold_id, name = name.split("/", 2)
            if not stream:
                return self._error(ex, 400, "the fake's hold scenario needs stream: true")
        path = recording_path(name, stream)
        if not path.is_file():
            return self._error(ex, 400, f"fake OpenRouter has no recording {path.relative_to(RECORDINGS_DIR)}")
        raw = path.read_bytes()
        if not stream:
            if compress:
                return self._json(ex, 200, gzip.compress(raw), {"content-encoding": "gzip"})
            return self._json(ex, 200, raw)
        return await self._stream(request, ex, raw, hold_id=hold_id)

    @staticmethod
    def _malformed() -> bytes:
        good = {"id": "gen-malformed", "object": "chat.completion.chunk", "model": "fake/malformed",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Fine so far"},
                             "finish_reason": None}]}
        bad = {"id": "gen-malformed", "object": "chat.completion.chunk", "model": "fake/malformed",
               "choices": [{"index": 0, "delta": "not an object", "finish_reason": None}]}
        return f"data: {json.dumps(good)}\n\ndata: {json.dumps(bad)}\n\ndata: [DONE]\n\n".encode()

    async def _stream(self, request: web.Request, ex: Exchange, raw: bytes,
                      hold_id: str | None = None) -> web.StreamResponse:
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache",
                   "x-generation-id": f"gen-fake-{ex.seq}"}
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        ex.status, ex.response_headers = 200, list(headers.items())
        await resp.prepare(request)
        writes = awkward_writes(raw)
        hold_after = None
        if hold_id is not None:  # hold after the write that completes the first data event with content
            match = re.search(rb'"content":"[^"][^\n]*\n\n', raw)
            assert match is not None, "a held recording needs a content event"
            written = 0
            for i, data in enumerate(writes):
                written += len(data)
                if written >= match.end():
                    hold_after = i
                    break
        try:
            for i, data in enumerate(writes):
                if self._stopping.is_set():
                    break
                if i == hold_after:
                    assert hold_id is not None
                    self._mark_holding(hold_id)
                await resp.write(data)
                ex.sent += data
                ex.writes.append((time.monotonic(), data))
                if i == hold_after:
                    assert hold_id is not None
                    await self._hold(hold_id, HOLD_TIMEOUT)
                await asyncio.sleep(self.write_delay)
            await resp.write_eof()
        except ConnectionError:
            ex.client_disconnected = True
            raise
        ex.completed = True
        return resp

