"""What every answer of the web app goes through on its way out: keys masked, and a clear error instead of a bare
500 when a handler fails (a store that cannot be read, a bug)."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from aiohttp import web

from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.webui.common import error_response

logger = logging.getLogger("anthropic_proxy.webui")


@web.middleware
async def masked_answers(request: web.Request, handler: Any) -> web.StreamResponse:
    """A whole JSON answer passes `mask_text`, as the live events and exports do (they stream, and mask as they
    write): nothing leaves the process with a key in it, whichever endpoint built it."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # (an error that may quote the request back)
        if exc.text:
            exc.text = mask_text(exc.text)
        raise
    except Exception as exc:
        logger.error("the web app failed to answer %s %s:\n%s", request.method, mask_text(request.path),
                     mask_text("".join(traceback.format_exception(exc))).rstrip())
        return error_response(500, f"anthropic-proxy failed to answer: {mask_text(str(exc)) or type(exc).__name__}",
                              "api_error")
    if isinstance(response, web.Response) and response.content_type == "application/json" \
            and isinstance(response.body, bytes):
        text = response.body.decode("utf-8", "replace")
        if (masked := mask_text(text)) != text:
            response.body = masked.encode()
    return response
