"""Concurrent streaming chats against any OpenAI-compatible server: aggregate tokens/s, time to first
token p50/p95, and how many answers came back cut short.

    hychat bench serve http://127.0.0.1:8000 --levels 1,2,4,8 --max-tokens 128 --rounds 3

Standard library only (http.client in threads): the client shares the machine with the server, so it
must stay light, and it must not favour one server. Every request opens with a fresh random system
line, so no prompt cache filled by an earlier request can help. Tokens come from the server's usage
block (`stream_options.include_usage`) when it sends one, else from the number of content chunks.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

PROMPTS = [
    "Write a short story about a robot learning to paint.",
    "Explain how a bicycle works.",
    "请介绍一下你自己。",
    "List ten fruits and describe each.",
    "Why is the sky blue?",
    "用三句话介绍长城。",
    "How do airplanes fly?",
    "Tell me about the ocean.",
]


@dataclass
class Answer:
    tokens: int
    ttft_s: float | None
    cut_short: bool
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    cut_short: int  # answers that ended early, errors included
    errors: int  # requests answered with an HTTP error, or whose connection failed


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (`q` in [0, 1]) of sorted, non-empty values."""
    return values[min(len(values) - 1, int(q * len(values)))]


def chat(url: str, index: int, max_tokens: int, api_key: str = "none") -> Answer:
    target = urlsplit(url.rstrip("/"))
    body = {
        "model": "default",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": f"Request {uuid.uuid4().hex[:8]}."},
            {"role": "user", "content": PROMPTS[index % len(PROMPTS)]},
        ],
    }
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=600)
    t0, first, chunks, usage, finish = time.perf_counter(), None, 0, None, None
    try:
        conn.request("POST", target.path + "/v1/chat/completions", json.dumps(body), headers)
        response = conn.getresponse()
        if response.status != 200:
            return Answer(0, None, True, f"HTTP {response.status}")
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    chunks += 1
                    first = first or time.perf_counter() - t0
                finish = choice.get("finish_reason") or finish
    except (OSError, http.client.HTTPException, ValueError) as error:  # a dropped stream is a result
        return Answer(chunks, first, True, repr(error))
    finally:
        conn.close()
    tokens = (usage or {}).get("completion_tokens", chunks)
    return Answer(tokens, first, finish is None or (finish != "stop" and tokens < max_tokens // 2))


def run_level(url: str, concurrency: int, max_tokens: int, api_key: str = "none") -> LevelResult:
    answers: list[Answer | None] = [None] * concurrency

    def one(i: int) -> None:
        answers[i] = chat(url, i, max_tokens, api_key)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = [a for a in answers if a is not None]
    firsts = sorted(a.ttft_s for a in done if a.ttft_s is not None) or [float("nan")]
    tokens = sum(a.tokens for a in done)
    return LevelResult(
        concurrency=concurrency,
        tokens=tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 2),
        ttft_p50_s=round(statistics.median(firsts), 3),
        ttft_p95_s=round(percentile(firsts, 0.95), 3),
        cut_short=sum(a.cut_short for a in done) + concurrency - len(done),
        errors=sum(a.error is not None for a in done) + concurrency - len(done),
    )


def run_levels(
    url: str, levels: list[int], max_tokens: int, rounds: int = 1, api_key: str = "none"
) -> Iterator[LevelResult]:
    """Every level once per round, after one short warm-up request (it loads caches and pages)."""
    warm = chat(url, 0, 8, api_key)
    if warm.error:
        raise ConnectionError(f"{url} did not answer a chat completion: {warm.error}")
    for _ in range(rounds):
        for concurrency in levels:
            yield run_level(url, concurrency, max_tokens, api_key)
