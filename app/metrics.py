"""Prometheus metrics: the metric objects and the few functions the rest of the code calls.

They live in this module's own registry, not prometheus_client's global one, so importing the app
twice (tests, several apps in one process) never registers a name twice. `GET /metrics` serves it,
followed by llama-server's own series for the llama.cpp backend (`LLAMA_SERVER`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
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
START_TIME_S = int(time.time())  # llama-server's Process-Start-Time-Unix header
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
HOST_CACHE_RESTORES = Counter(
    "hychat_prompt_cache_restores_total", "Prompt states restored from the host-memory cache.", registry=REGISTRY
)
HOST_CACHE_TOKENS = Counter(
    "hychat_prompt_cache_restored_tokens_total", "Prompt tokens restored from the host-memory cache.", registry=REGISTRY
)
HOST_CACHE_BYTES = Gauge(
    "hychat_prompt_cache_bytes", "Bytes of prompt states the host-memory cache holds.", registry=REGISTRY
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
# The Gateway API Inference Extension's KVCacheUtilization (vLLM's vllm:kv_cache_usage_perc), read at scrape time.
KV_CACHE_USAGE = Gauge(
    "hychat_kv_cache_usage_perc",
    "Fraction (0-1) of the KV cache's cells that running requests hold; idle slots' cells count as free.",
    ["backend"],
    registry=REGISTRY,
)

_PER_BACKEND = (
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    PROMPT_CACHED_TOKENS,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    QUEUE_DEPTH,
    SLOTS_BUSY,
    SLOTS_TOTAL,
    KV_CACHE_USAGE,
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
    if backend == LLAMA_CPP:
        LLAMA_SERVER.add_generation(usage)
    PROMPT_TOKENS.labels(backend=backend).inc(usage.prompt_tokens)
    GENERATION_TOKENS.labels(backend=backend).inc(usage.completion_tokens)
    PROMPT_CACHED_TOKENS.labels(backend=backend).inc(usage.cached_tokens)
    TIME_TO_FIRST_TOKEN.labels(backend=backend).observe(usage.ttft_ms / 1000)
    if usage.decode_tokens_per_s > 0:
        TIME_PER_OUTPUT_TOKEN.labels(backend=backend).observe(1 / usage.decode_tokens_per_s)


def record_decode(n_sequences: int) -> None:
    """One llama_decode of the llama.cpp engine, over `n_sequences` requests."""
    LLAMA_SERVER.add_decode(n_sequences)


def record_host_cache(restored_tokens: int, bytes_change: int) -> None:
    """The host-memory prompt cache (llama-server's --cache-ram): a state restored (its tokens), and the
    change in the bytes it holds."""
    if restored_tokens:
        HOST_CACHE_RESTORES.inc()
        HOST_CACHE_TOKENS.inc(restored_tokens)
    HOST_CACHE_BYTES.inc(bytes_change)


def set_scheduler_state(backend: str, queued: int, busy: int, total: int) -> None:
    if backend == LLAMA_CPP:
        LLAMA_SERVER.deferred, LLAMA_SERVER.processing = queued, busy
    QUEUE_DEPTH.labels(backend=backend).set(queued)
    SLOTS_BUSY.labels(backend=backend).set(busy)
    SLOTS_TOTAL.labels(backend=backend).set(total)


def set_kv_cache_usage(cells: Iterable[tuple[str, int, int]]) -> None:
    """Each backend's (name, cells held by running requests, cells in all), several models summed."""
    held: dict[str, list[int]] = {}
    for backend, used, total in cells:
        sums = held.setdefault(backend, [0, 0])
        sums[0] += used
        sums[1] += total
    for backend, (used, total) in held.items():
        KV_CACHE_USAGE.labels(backend=backend).set(used / total if total else 0.0)


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, then llama-server's series, and its content type.
    Each scrape starts a new window for llama-server's throughput gauges."""
    return generate_latest(REGISTRY) + LLAMA_SERVER.scrape().encode(), CONTENT_TYPE_LATEST


# -- llama-server's series ----------------------------------------------------------------------

LLAMA_CPP = "llamacpp"  # the backend they describe


@dataclass
class _Bucket:
    """Tokens, the decode steps they cost, and the time they took (server_metrics::bucket)."""

    count: int = 0
    steps: int = 0
    time_s: float = 0.0

    def add(self, count: int, steps: int, time_s: float) -> None:
        self.count, self.steps, self.time_s = self.count + count, self.steps + steps, self.time_s + time_s

    def rate(self) -> float:
        return self.steps / self.time_s if self.time_s > 0 else 0.0


@dataclass
class LlamaServerSeries:
    """llama-server's `llamacpp:` series (server-task.cpp, to_metrics), with its names and meanings,
    so that what reads a llama-server reads hychat's llama.cpp backend alike. Times are hychat's
    timings' (an answer's prompt time up to its first token, then its generation). Written by hand:
    prometheus_client names a counter's TYPE line without `_total`, and llama-server's readers look
    up each sample's own name there. The speculative decoding counters sum the answers' drafts
    (`Usage.drafted_tokens`, `accepted_tokens`, `drafts`)."""

    prompt: _Bucket = field(default_factory=_Bucket)  # since the start: processed prompt tokens, not cached ones
    predict: _Bucket = field(default_factory=_Bucket)
    prompt_window: _Bucket = field(default_factory=_Bucket)  # since the last scrape, for the rates
    predict_window: _Bucket = field(default_factory=_Bucket)
    n_prompt_cached: int = 0
    n_tokens_max: int = 0  # the longest sequence, prompt and answer
    n_decode: int = 0
    n_busy_slots: int = 0  # summed over the decodes
    n_draft_tokens: int = 0  # speculative decoding: tokens drafted and verified
    n_draft_accepted: int = 0
    n_drafts: int = 0  # verification steps with a draft
    processing: int = 0
    deferred: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_generation(self, usage: Usage) -> None:
        prompt_n = usage.prompt_tokens - usage.cached_tokens
        predicted_s = max(usage.total_ms - usage.ttft_ms, 0.0) / 1000
        steps = max(usage.completion_tokens - 1, 0)  # the first token comes with the prompt's last batch
        with self._lock:
            for prompt, predict in ((self.prompt, self.predict), (self.prompt_window, self.predict_window)):
                prompt.add(prompt_n, prompt_n, usage.ttft_ms / 1000)
                predict.add(usage.completion_tokens, steps, predicted_s)
            self.n_prompt_cached += usage.cached_tokens
            self.n_tokens_max = max(self.n_tokens_max, usage.prompt_tokens + usage.completion_tokens)
            self.n_draft_tokens += usage.drafted_tokens
            self.n_draft_accepted += usage.accepted_tokens
            self.n_drafts += usage.drafts

    def add_decode(self, n_sequences: int) -> None:
        with self._lock:
            self.n_decode += 1
            self.n_busy_slots += n_sequences

    def scrape(self) -> str:
        with self._lock:
            values = {
                "prompt_tokens_total": self.prompt.count,
                "prompt_tokens_cached_total": self.n_prompt_cached,
                "prompt_seconds_total": self.prompt.time_s,
                "tokens_predicted_total": self.predict.count,
                "tokens_predicted_seconds_total": self.predict.time_s,
                "n_decode_total": self.n_decode,
                "n_tokens_max": self.n_tokens_max,
                "spec_decode_num_draft_tokens_total": self.n_draft_tokens,
                "spec_decode_num_accepted_tokens_total": self.n_draft_accepted,
                "spec_decode_num_drafts_total": self.n_drafts,
                "prompt_tokens_seconds": self.prompt_window.rate(),
                "predicted_tokens_seconds": self.predict_window.rate(),
                "requests_processing": self.processing,
                "requests_deferred": self.deferred,
                "n_busy_slots_per_decode": self.n_busy_slots / max(self.n_decode, 1),
            }
            self.prompt_window, self.predict_window = _Bucket(), _Bucket()  # the gauges' window: between scrapes
        return "".join(
            f"# HELP llamacpp:{name} {text}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {values[name]}\n"
            for name, (kind, text) in LLAMA_SERVER_SERIES.items()
        )


# llama-server's words for them.
LLAMA_SERVER_SERIES = {
    "prompt_tokens_total": ("counter", "Number of prompt tokens processed, excluding cached tokens"),
    "prompt_tokens_cached_total": ("counter", "Number of prompt tokens reused from the cache"),
    "prompt_seconds_total": ("counter", "Total time spent processing prompts"),
    "tokens_predicted_total": ("counter", "Number of generation tokens processed"),
    "tokens_predicted_seconds_total": ("counter", "Total time spent generating tokens"),
    "n_decode_total": ("counter", "Total number of llama_decode() calls"),
    "n_tokens_max": ("counter", "Largest observed sequence length (prompt + generation)"),
    "spec_decode_num_draft_tokens_total": ("counter", "Speculative: Total draft tokens generated"),
    "spec_decode_num_accepted_tokens_total": (
        "counter",
        "Speculative: Total draft tokens accepted by the target model",
    ),
    "spec_decode_num_drafts_total": ("counter", "Speculative: Total speculative decoding verification steps"),
    "prompt_tokens_seconds": ("gauge", "Average prompt throughput in tokens/s"),
    "predicted_tokens_seconds": ("gauge", "Average generation throughput in tokens/s"),
    "requests_processing": ("gauge", "Number of requests processing"),
    "requests_deferred": ("gauge", "Number of requests deferred"),
    "n_busy_slots_per_decode": ("gauge", "Average number of busy slots per llama_decode() call"),
}


LLAMA_SERVER = LlamaServerSeries()
