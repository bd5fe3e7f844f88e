"""CORS as llama-server does it (tools/server/server-http.cpp), for pages of other origins that call the API.

Hand-written rather than Starlette's CORSMiddleware, which differs where llama-server's clients notice:
it answers a preflight from a refused origin with a 400 (llama-server: a 200 without the header, which
the browser refuses all the same), and its header names go out in lower case (llama-server's clients
compare them as written). An allowed origin is echoed back with credentials allowed; a preflight is
answered here, before the API key is asked for, since browsers send none with it.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOCAL_ORIGIN = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?")  # a page served from this machine
METHODS = "GET, POST, DELETE, OPTIONS"
EXPOSED = "X-Request-ID, Retry-After"


class Cors:
    """`origins`: allowed origins; `*` any, `localhost` any page of this machine (llama-server's values)."""

    def __init__(self, app: ASGIApp, origins: list[str]):
        self.app, self.origins = app, set(origins)

    def allows(self, origin: str) -> bool:
        if "*" in self.origins or origin in self.origins:
            return True
        return "localhost" in self.origins and LOCAL_ORIGIN.fullmatch(origin) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = [(b"Access-Control-Allow-Origin", origin.encode("latin-1"))] if origin and self.allows(origin) else []
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            # The requested headers are named rather than "*" (llama-server's): a "*" does not cover
            # Authorization, the API key's header (Fetch standard).
            asked = headers.get("access-control-request-headers", "*")
            preflight = [
                (b"Access-Control-Allow-Credentials", b"true"),
                (b"Access-Control-Allow-Methods", METHODS.encode()),
                (b"Access-Control-Allow-Headers", asked.encode("latin-1")),
                (b"Access-Control-Max-Age", b"600"),
                (b"Vary", b"Origin"),
                (b"Content-Length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": allowed + preflight})
            return await send({"type": "http.response.body", "body": b""})
        if not allowed:
            return await self.app(scope, receive, send)
        extra = [
            *allowed,
            (b"Access-Control-Allow-Credentials", b"true"),
            (b"Access-Control-Expose-Headers", EXPOSED.encode()),
        ]

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra, (b"Vary", b"Origin")]}
            await send(message)

        await self.app(scope, receive, with_cors)
