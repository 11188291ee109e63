"""Per-request model override: a header picks the model, whatever the client put in the body.

    mitmdump -s examples/model_override.py -s addons/proxy.py          # load it BEFORE the proxy
    curl localhost:8082/v1/messages -H 'x-anthropic-proxy-model: claude-haiku-4-5' ...

A call to /v1/messages or /v1/messages/count_tokens carrying `x-anthropic-proxy-model: <model>` has its body's
`model` replaced by that value, and the header removed, so the upstream never sees it. Useful when a tool
lets you add headers but not choose the model (Claude Code: `ANTHROPIC_CUSTOM_HEADERS`).

Load order: loaded first, the override happens before the proxy's own `request` hooks, so the record shows
the model actually used and, in openrouter mode, the model mapping applies to it. Loaded after the proxy
(anthropic mode would still work, openrouter mode would not) it logs an error, which stops mitmproxy at
start-up.

A value that is not a plain model id (empty, spaces, over 200 characters) is refused with an Anthropic-shaped
`400 invalid_request_error`, instead of being sent on.
"""

from __future__ import annotations

import json
import logging
import re

from mitmproxy import ctx, http
from mitmproxy.addonmanager import traverse

logger = logging.getLogger("anthropic_proxy.examples.model_override")

HEADER = "x-anthropic-proxy-model"
PATHS = ("/v1/messages", "/v1/messages/count_tokens")
MODEL_ID = re.compile(r"^[A-Za-z0-9._:/@\-\[\]]{1,200}$")


def error_response(message: str) -> http.Response:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return http.Response.make(400, json.dumps(body).encode(), {"content-type": "application/json"})


class ModelOverride:
    def __init__(self) -> None:
        self.enabled = True

    def running(self) -> None:
        order = [a for a in traverse(ctx.master.addons.chain) if a is self or type(a).__name__ == "Router"]
        if order and order[0] is not self:
            self.enabled = False
            logger.error("model_override: load it BEFORE addons/proxy.py (mitmdump -s examples/model_override.py "
                         "-s addons/proxy.py). The override is off.")

    def request(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if HEADER not in request.headers:
            return
        wanted = request.headers.pop(HEADER).strip()  # never forwarded, whatever happens next
        if (not self.enabled or flow.response or request.method != "POST"
                or request.path.split("?", 1)[0] not in PATHS):
            return
        if not MODEL_ID.match(wanted):
            flow.response = error_response(f"{HEADER}: {wanted!r} is not a model id")
            return
        try:
            body = json.loads(request.content or b"")
        except (ValueError, UnicodeDecodeError):
            return  # not JSON: the API answers that itself
        if not isinstance(body, dict):
            return
        original = body.get("model")
        body["model"] = wanted
        request.content = json.dumps(body, ensure_ascii=False).encode()
        flow.metadata["model_override.original"] = original
        logger.info("model_override: %s -> %s", original, wanted)


addons = [ModelOverride()]
