"""Google Cloud Vertex AI's prediction route, as llama-server serves it, when the settings turn it on
(HYCHAT_GCP_COMPAT, or Vertex AI's own AIP_MODE=PREDICTION: config/settings.py).

`POST gcp_predict_route` (/predict): each instance of `{"instances": [...]}` is sent, all at once, as a
request of its own through the whole app to the route its `@requestFormat` names, with the caller's
headers (its API key among them); `{"predictions": [...]}` holds their answers in order, an error's
body included, as llama-server gives them. So every route is reachable as there, and each keeps its
own checks and errors. A route whose answer streams is refused. With gcp_health_route, that path
answers as /health. The conversions: app/protocol/gcp.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import Message

from app.errors import HychatError, InvalidParameterError
from app.protocol import gcp, llama_server
from app.protocol.errors import error_responses
from app.protocol.llama_server import LlamaServerErrorResponse
from app.protocol.simple import HealthResponse
from app.routes import health
from app.routes.deps import SettingsDep, behind_api_key, dialect_route
from config.settings import Settings

STREAMS = ("text/event-stream", "application/x-ndjson")
# What an instance's request keeps of the caller's (ASGI scope): the connection, not the route.
SCOPE_KEPT = ("type", "asgi", "http_version", "scheme", "server", "client", "root_path", "extensions")


def router(settings: Settings) -> APIRouter | None:
    if not settings.gcp_compat:
        return None
    routes = APIRouter(route_class=dialect_route(llama_server.error_body))
    guarded = behind_api_key(LlamaServerErrorResponse)
    responses = {
        200: {"description": '`{"predictions": [...]}`: each instance\'s answer (or error body), in order.'},
        **error_responses(400, model=LlamaServerErrorResponse),
        **guarded["responses"],
    }
    routes.add_api_route(
        settings.gcp_predict_route, predict, methods=["POST"], dependencies=guarded["dependencies"], responses=responses
    )
    if settings.gcp_health_route:  # open, as /health
        routes.add_api_route(settings.gcp_health_route, health.health, methods=["GET"], response_model=HealthResponse)
    return routes


async def predict(request: Request, settings: SettingsDep) -> JSONResponse:
    try:
        body = await request.json()
    except (ValueError, RecursionError) as error:
        raise InvalidParameterError(f"the body is not valid JSON: {error}") from None
    targets = _targets(request.app, {settings.gcp_predict_route, settings.gcp_health_route})
    predictions = await asyncio.gather(*(_predict(request, targets, instance) for instance in gcp.instances(body)))
    return JSONResponse({"predictions": predictions})


def _targets(app: FastAPI, own: set[str | None]) -> dict[str, tuple[str, str]]:
    """(method, path) of each route without path parameters, by its path and by its camelCase name
    (of two routes with one name, the first served); POST where a path has it. The routes as the
    app's OpenAPI document lists them, in order (FastAPI keeps included routers nested)."""
    by_path: dict[str, tuple[str, str]] = {}
    for path, operations in app.openapi()["paths"].items():
        if "{" not in path and path not in own:
            by_path[path] = ("POST" if "post" in operations else min(operations).upper(), path)
    by_name: dict[str, tuple[str, str]] = {}
    for path, target in by_path.items():
        by_name.setdefault(gcp.request_format(path), target)
    return by_name | by_path


async def _predict(request: Request, targets: dict[str, tuple[str, str]], instance: Any) -> Any:
    try:
        name, body = gcp.instance_request(instance)
        if name not in targets:
            raise InvalidParameterError(f"no handler registered for {gcp.FORMAT}: {name}")
        streamed, answer = await _call(request, *targets[name], body)
        if streamed:
            raise InvalidParameterError("predict route does not support streaming responses")
        return gcp.prediction(answer)
    except HychatError as error:
        return llama_server.error_body(error)


async def _call(request: Request, method: str, path: str, body: dict[str, Any]) -> tuple[bool, bytes]:
    """`body` to `path` through the app, as a request of the caller's connection and headers: whether
    the answer is a stream, and the answer."""
    content = json.dumps(body, ensure_ascii=False).encode()
    dropped = (b"content-length", b"content-type", b"transfer-encoding")
    headers = [(key, value) for key, value in request.scope["headers"] if key.lower() not in dropped]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    root = request.scope.get("root_path", "")
    scope = {key: request.scope[key] for key in SCOPE_KEPT if key in request.scope} | {
        "method": method,
        "path": root + path,
        "raw_path": (root + path).encode(),
        "query_string": b"",
        "headers": headers,
        "state": dict(request.scope.get("state", {})),  # each request its own (a route writes to it)
    }
    incoming: list[Message] = [{"type": "http.request", "body": content, "more_body": False}]
    status: dict[str, Any] = {}
    chunks: list[bytes] = []
    refused = asyncio.Event()

    async def receive() -> Message:
        if incoming:
            return incoming.pop()
        await refused.wait()  # a stream's client leaves once its headers came: that ends it
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.update(message)
            if dict(message.get("headers", [])).get(b"content-type", b"").decode().startswith(STREAMS):
                refused.set()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(scope, receive, send)
    return refused.is_set(), b"".join(chunks)
