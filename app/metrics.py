"""Prometheus metrics: the metric objects and the few functions the rest of the code calls.

They live in this module's own registry, not prometheus_client's global one, so importing the app
twice (tests, several apps in one process) never registers a name twice. `GET /metrics` serves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

if TYPE_CHECKING:
    from app.types import Usage

REGISTRY = CollectorRegistry()
# process_resident_memory_bytes, CPU seconds, open files: what a soak run watches for leaks.
ProcessCollector(registry=REGISTRY)

# CPU inference: a small model answers in milliseconds, a 7B model on a busy machine in tens of seconds.
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "hychat_requests_total",
    "HTTP requests answered, by route template and status.",
    ["route", "status"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter("hychat_prompt_tokens_total", "Prompt tokens processed.", ["backend"], registry=REGISTRY)
GENERATION_TOKENS = Counter("hychat_generation_tokens_total", "Tokens generated.", ["backend"], registry=REGISTRY)
PROMPT_CACHED_TOKENS = Counter(
    "hychat_prompt_cached_tokens_total", "Prompt tokens whose KV cache was reused.", ["backend"], registry=REGISTRY
)
TIME_TO_FIRST_TOKEN = Histogram(
    "hychat_time_to_first_token_seconds",
    "Request start to first sampled token, prompt processing included.",
    ["backend"],
    buckets=TTFT_BUCKETS_S,
    registry=REGISTRY,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "hychat_time_per_output_token_seconds",
    "Mean time per generated token after the first, one sample a generation.",
    ["backend"],
    buckets=TPOT_BUCKETS_S,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("hychat_queue_depth", "Requests waiting for a slot.", ["backend"], registry=REGISTRY)
SLOTS_BUSY = Gauge("hychat_slots_busy", "Slots generating now.", ["backend"], registry=REGISTRY)
SLOTS_TOTAL = Gauge("hychat_slots_total", "Slots the engine has.", ["backend"], registry=REGISTRY)

_PER_BACKEND = (
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    PROMPT_CACHED_TOKENS,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    QUEUE_DEPTH,
    SLOTS_BUSY,
    SLOTS_TOTAL,
)


def declare_backends(names: Iterable[str]) -> None:
    """Makes every per-backend series exist (at 0) before the first request, so dashboards and
    rate() see them from the start."""
    for name in names:
        for metric in _PER_BACKEND:
            metric.labels(backend=name)


def record_request(route: str, status: int) -> None:
    REQUESTS.labels(route=route, status=str(status)).inc()


def record_generation(backend: str, usage: Usage) -> None:
    """One finished generation's tokens and timings."""
    PROMPT_TOKENS.labels(backend=backend).inc(usage.prompt_tokens)
    GENERATION_TOKENS.labels(backend=backend).inc(usage.completion_tokens)
    PROMPT_CACHED_TOKENS.labels(backend=backend).inc(usage.cached_tokens)
    TIME_TO_FIRST_TOKEN.labels(backend=backend).observe(usage.ttft_ms / 1000)
    if usage.decode_tokens_per_s > 0:
        TIME_PER_OUTPUT_TOKEN.labels(backend=backend).observe(1 / usage.decode_tokens_per_s)


def set_scheduler_state(backend: str, queued: int, busy: int, total: int) -> None:
    QUEUE_DEPTH.labels(backend=backend).set(queued)
    SLOTS_BUSY.labels(backend=backend).set(busy)
    SLOTS_TOTAL.labels(backend=backend).set(total)


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
