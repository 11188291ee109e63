"""A keyless OpenAI-compatible chat completions server, standing for a local model server (Ollama, LM Studio,
vLLM, llama.cpp) or a provider such as DeepSeek.

    with FakeOpenAICompatible() as fake:      # base URL for the proxy's provider entry: fake.base_url (…/v1)
        ex = fake.wait_for(lambda ex: ex.user == tag)

`POST /v1/chat/completions` validates the body like the OpenRouter fake does, and, like OpenAI and strict
servers, refuses OpenRouter's own fields (`usage`, `reasoning`, `provider`, `transforms`) with a 400. It never
asks for a key and keeps whatever credentials arrive (tests check that none of the client's do). It answers:

- with `reasoning_effort`, thinking as `reasoning_content` deltas (DeepSeek's and vLLM's spelling), then text;
- with tools and a last user message that mentions `TOOL_TRIGGER`, a call of the tool `Read` (else the first
  tool), its first required property set to `TOOL_ARGUMENT`, in fragments (a tool result back gets text);
- otherwise the text `LOCAL_TEXT`.
Usage comes only when asked (`stream_options.include_usage`: a last chunk with empty `choices`, as OpenAI does).
The model `fake-error/<status>` answers that status (429 and 503 with `retry-after: 30`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from .openrouter_upstream import Exchange, InvalidRequest, receive, validate_chat_request
from .server import FakeServer

LOCAL_TEXT = "Hello from the local model."
LOCAL_REASONING = "The user greets me; a short greeting back will do."
TOOL_TRIGGER = "README"
TOOL_ARGUMENT = "/etc/hostname"
OPENROUTER_ONLY = ("usage", "reasoning", "provider", "transforms", "models", "route")
USAGE = {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}


def chunk(model: str, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    payload = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": choices, **extra}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class FakeOpenAICompatible(FakeServer):
    name = "fake OpenAI-compatible server"

    def __init__(self, host: str = "127.0.0.1", write_delay: float = 0.002) -> None:
        super().__init__(host)
        self.write_delay = write_delay

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def by_user(self, user: str) -> list[Exchange]:
        return self.find(lambda ex: ex.user == user)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ex = await receive(self, request)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return self._json(ex, 404, {"error": {"message": f"no route {request.path}", "type": "not_found"}})
        try:
            payload = json.loads(ex.body)
            validate_chat_request(payload)
            extra = [k for k in OPENROUTER_ONLY if k in payload]
            if extra:
                raise InvalidRequest(f"Unrecognized request argument supplied: {extra[0]}")
        except ValueError:
            return self._json(ex, 400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
        except InvalidRequest as exc:
            ex.error = exc.message
            return self._json(ex, exc.status, {"error": {"message": exc.message, "type": "invalid_request_error"}})
        model = payload["model"]
        if model.startswith("fake-error/"):
            status = int(model.split("/", 1)[1])
            headers = {"retry-after": "30"} if status in (429, 503) else {}
            return self._json(ex, status, {"error": {"message": f"fake error {status}", "type": "server_error"}},
                              headers)
        parts = self._answer(payload)
        if payload.get("stream") is not True:
            return self._json(ex, 200, self._whole(model, parts))
        return await self._stream(request, ex, model, parts, bool((payload.get("stream_options") or {})
                                                                   .get("include_usage")))

    @staticmethod
    def _answer(payload: dict[str, Any]) -> dict[str, Any]:
        parts: dict[str, Any] = {"reasoning": LOCAL_REASONING if payload.get("reasoning_effort") else None}
        tools = [t["function"] for t in payload.get("tools") or []]
        last = payload["messages"][-1]
        if tools and last.get("role") == "user" and TOOL_TRIGGER in json.dumps(last.get("content")):
            function = next((t for t in tools if t["name"] == "Read"), tools[0])
            schema = function.get("parameters") or {}
            field = (schema.get("required") or list((schema.get("properties") or {}).keys()) or ["input"])[0]
            parts["tool"] = (function["name"], json.dumps({field: TOOL_ARGUMENT}))
        else:
            parts["text"] = LOCAL_TEXT
        return parts

    @staticmethod
    def _whole(model: str, parts: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": parts.get("text")}
        if parts["reasoning"]:
            message["reasoning_content"] = parts["reasoning"]
        if "tool" in parts:
            name, arguments = parts["tool"]
            message["tool_calls"] = [{"id": "call_local_1", "type": "function",
                                      "function": {"name": name, "arguments": arguments}}]
        finish = "tool_calls" if "tool" in parts else "stop"
        return {"id": "chatcmpl-local", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": USAGE}

    async def _stream(self, request: web.Request, ex: Exchange, model: str, parts: dict[str, Any],
                      include_usage: bool) -> web.StreamResponse:
        writes = [chunk(model, {"role": "assistant", "content": ""})]
        if parts["reasoning"]:
            half = len(parts["reasoning"]) // 2
            writes += [chunk(model, {"reasoning_content": parts["reasoning"][:half]}),
                       chunk(model, {"reasoning_content": parts["reasoning"][half:]})]
        if "tool" in parts:
            name, arguments = parts["tool"]
            writes.append(chunk(model, {"tool_calls": [{"index": 0, "id": "call_local_1", "type": "function",
                                                        "function": {"name": name, "arguments": ""}}]}))
            writes += [chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                       for piece in (arguments[:5], arguments[5:])]
            writes.append(chunk(model, {}, "tool_calls"))
        else:
            writes += [chunk(model, {"content": piece}) for piece in ("Hello from", " the local", " model.")]
            writes.append(chunk(model, {}, "stop"))
        if include_usage:
            writes.append(chunk(model, None, usage=USAGE))
        writes.append(b"data: [DONE]\n\n")
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        ex.status, ex.response_headers = 200, list(headers.items())
        await resp.prepare(request)
        for data in writes:
            await resp.write(data)
            ex.sent += data
            ex.writes.append((time.monotonic(), data))
            await asyncio.sleep(self.write_delay)
        await resp.write_eof()
        ex.completed = True
        return resp

    def _json(self, ex: Exchange, status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        data = json.dumps(payload).encode()
        headers = {"content-type": "application/json", **(headers or {})}
        ex.status, ex.response_headers = status, list(headers.items())
        ex.sent += data
        ex.completed = True
        return web.Response(status=status, body=data, headers=headers)
