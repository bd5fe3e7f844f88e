"""What the OpenAPI schema says beyond FastAPI's defaults: the Server-Sent Events a streamed answer
sends, and no 422 (a body that does not fit its wire type is a 400 in OpenAI's error shape)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.protocol.errors import ErrorResponse


def event_stream_response(
    description: str, events: dict[str, tuple[type[BaseModel], ...]], done_data: str | None = None
) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers Server-Sent Events with `"stream": true` (JSON otherwise).
    `events`: each event name and the models its JSON `data` may hold (an error is always one);
    `done_data`: a last event's data that is not JSON (`[DONE]`). The schema describes one event, as
    OpenAPI 3.2 (`itemSchema`) and schema-driven clients read it."""
    variants = []
    for name, models in events.items():
        payload = {"anyOf": [inlined(model) for model in (*models, ErrorResponse)]}
        data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}
        if done_data is not None:
            data = {"type": "string", "if": {"const": done_data}, "else": data}
        variants.append({"properties": {"event": {"const": name}, "data": data}})
    event = {"type": "object", "required": ["event", "data"], "oneOf": variants}
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}


def without_validation_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 with its own body on every route that takes parameters; this service
    answers a body that does not validate with a 400 in OpenAI's error shape (declared per route)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


def inlined(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema (as it is sent) with its `$defs` written in place: the schema of an
    event's data stands alone, outside the components."""
    schema = model.model_json_schema(mode="serialization")
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)
