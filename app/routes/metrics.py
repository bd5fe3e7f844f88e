"""`GET /metrics`: Prometheus' text format (behind the API key when one is set; off with
HYCHAT_ENDPOINT_METRICS=false, a 501 as llama-server's without --metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app import metrics
from app.errors import NotSupportedError
from app.protocol import llama_server
from app.protocol.llama_server import LlamaServerErrorResponse
from app.routes.deps import BEHIND_API_KEY, RegistryDep, SettingsDep

router = APIRouter(**BEHIND_API_KEY)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus' text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        501: {"model": LlamaServerErrorResponse, "description": "Off (HYCHAT_ENDPOINT_METRICS=false, --no-metrics)."},
    },
)
def prometheus_metrics(settings: SettingsDep, registry: RegistryDep) -> Response:
    if not settings.endpoint_metrics:  # llama-server's answer without --metrics, in its shape
        error = NotSupportedError("This server does not support metrics endpoint. Start it with --metrics")
        return JSONResponse(llama_server.error_body(error), status_code=error.status_code)
    metrics.set_kv_cache_usage(registry.kv_cells())
    body, content_type = metrics.exposition()
    response = Response(body, media_type=content_type)
    # As llama-server's /metrics: when the process started (its counters count from there), in Unix
    # seconds, under its name as written there (`headers=` would lower-case it; some clients match case).
    response.raw_headers.append((b"Process-Start-Time-Unix", str(metrics.START_TIME_S).encode()))
    return response
