"""Request id, request log and request counter, as a plain ASGI middleware.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would run the app in another task and
keep a streaming response from seeing its client go away. The request id comes from the client's
`X-Request-ID` when it is sane, or is made here; it goes back in the response's `X-Request-ID`, and
every log line written while the request runs carries it. One log line per request is written when
the response has ended: for a stream, when the stream ends or the client left it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.logging_setup import request_id

log = logging.getLogger("app.requests")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# nginx's code for "the client closed the connection before a response started".
CLIENT_CLOSED = 499


@dataclass
class _Exchange:
    status: int | None = None
    complete: bool = False  # the last body message was sent
    disconnected: bool = False  # the client left before that


class RequestTelemetry:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        rid = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        exchange, t_start = _Exchange(), perf_counter()

        async def receive_watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not exchange.complete:
                exchange.disconnected = True
            return message

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                exchange.complete = True
                # Counted before the client can see the end, so a scrape right after it includes it.
                metrics.record_request(_route(scope), exchange.status or 500)
            await send(message)

        try:
            await self.app(scope, receive_watched, send_tagged)
        finally:
            # Nothing sent: the client left first, or the app raised (Starlette's outer error
            # middleware then answers 500, past this one).
            status = exchange.status or (CLIENT_CLOSED if exchange.disconnected else 500)
            if not exchange.complete:
                metrics.record_request(_route(scope), status)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": _route(scope),
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((perf_counter() - t_start) * 1000, 1),
                    "disconnected": exchange.disconnected,
                },
            )
            request_id.reset(token)


def _route(scope: Scope) -> str:
    """The matched route's path template, never the raw path (that would make a metric series per
    URL). "unmatched": no route (404), or refused before routing (413)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"
