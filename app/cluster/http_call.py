"""One HTTP request carried to a replica and answered there by the app in-process: the request as
plain data (it crosses a process boundary), the answer as its status line then its body's pieces as the
app writes them, so a stream stays a stream. Written here because httpx's ASGI transport reads the
whole body before it returns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpCall:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None
    prompt_key: str = ""  # what the router matches against what each replica was sent (affinity.prompt_key)


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    replica: str = ""  # the replica answering, as the gateway reports it in X-Hychat-Replica


async def answer(app: ASGIApp, call: HttpCall, replica: str = "") -> AsyncIterator[ResponseStart | bytes]:
    """`call` answered by `app`: a ResponseStart, then the body's pieces. Leaving early (the client went
    away) is a disconnect for the app, which cancels the generation as it would over a socket."""
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    task = asyncio.create_task(_run(app, _scope(call), _receive(call.body, gone), messages))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield ResponseStart(message["status"], list(message.get("headers", [])), replica)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return
    finally:
        gone.set()
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:  # an app that ignores the disconnect
            task.cancel()


async def _run(app: ASGIApp, scope: dict[str, Any], receive: Any, messages: asyncio.Queue[Message | None]) -> None:
    try:
        await app(scope, receive, messages.put)
    except Exception:  # Starlette has sent its 500 already and re-raises; the server's log has it
        log.exception("the app failed on %s", scope["path"])
    finally:
        await messages.put(None)


def _receive(body: bytes, gone: asyncio.Event) -> Any:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


def _scope(call: HttpCall) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": call.method,
        "scheme": "http",
        "path": call.path,
        "raw_path": call.path.encode(),
        "query_string": call.query,
        "root_path": "",
        "headers": call.headers,
        "client": call.client,
        "server": ("127.0.0.1", 80),
        "state": {},
    }
