"""Google Cloud Vertex AI's prediction protocol, as llama-server speaks it (server-http.cpp,
register_gcp_compat): `{"instances": [...]}` in, `{"predictions": [...]}` out, each instance the body
of a request to another route, which its `@requestFormat` names: the route's path, or its camelCase
name ("chatCompletions": /v1/chat/completions). The checks here answer in llama-server's words. The
route: app/routes/gcp.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.errors import InvalidParameterError

MAX_INSTANCES = 128
FORMAT = "@requestFormat"


def request_format(path: str) -> str:
    """A route's camelCase name (path_to_gcp_format): without /v1, each word after a / - or _
    capitalised, up to a path parameter. "/v1/chat/completions": "chatCompletions",
    "/apply-template": "applyTemplate", "/completion": "completion"."""
    path = path[3:] if path.startswith("/v1") and len(path) > 3 else path
    first, *rest = re.split(r"[/_-]", path.removeprefix("/").split("{")[0])
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def instances(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise InvalidParameterError("request body must be a JSON object")
    found = body.get("instances")
    if not isinstance(found, list):
        raise InvalidParameterError("request body must include an array field named instances")
    if len(found) > MAX_INSTANCES:
        raise InvalidParameterError(f"instances array exceeds maximum size of {MAX_INSTANCES}")
    return found


def instance_request(instance: Any) -> tuple[str, dict[str, Any]]:
    """An instance's @requestFormat, and the body for its route: never streamed, as a prediction is
    a whole answer."""
    if not isinstance(instance, dict):
        raise InvalidParameterError("each instance must be a JSON object")
    name = instance.get(FORMAT)
    if not isinstance(name, str):
        raise InvalidParameterError(f"each instance must include a string {FORMAT}")
    body = {key: value for key, value in instance.items() if key != FORMAT}
    if "stream" in body:
        body["stream"] = False
    return name, body


def prediction(body: bytes) -> Any:
    """A route's answer as a prediction (parse_gcp_predict_response): its JSON (an error's body
    too), else its text; null when empty."""
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
