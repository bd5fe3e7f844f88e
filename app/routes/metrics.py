"""`GET /metrics`: Prometheus' text format (behind the API key when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app import metrics
from app.routes.deps import BEHIND_API_KEY

router = APIRouter(**BEHIND_API_KEY)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus' text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
