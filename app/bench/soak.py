"""Mixed traffic against a running server for a set time, watching for errors, leaks and stuck slots.

    hychat bench soak http://127.0.0.1:8000 --duration 1800 --clients 4

Each client sends every kind of request a real service sees once, then picks them at random:
`/api/chat` as JSON and as a stream, an OpenAI stream, `/v1/completions`, a `json_schema` answer
(which must parse and carry the schema's keys), and a stream the client abandons at a random point.
At the end it waits for the server to go idle and reports requests served, errors, latency
percentiles, the server's resident memory (`process_resident_memory_bytes` from its `/metrics`) after
the warm-up and at the end, and the slots still busy. Standard library only, like `loadgen`: the
client shares the machine.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from app.bench import loadgen

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
QUESTIONS = ["你好，请介绍一下北京。", "用一句话介绍长城。", "What is the capital of France?", "写一首关于春天的短诗。"]


@dataclass
class SoakReport:
    duration_s: float
    clients: int
    requests: dict[str, int]  # completed requests by kind (abandoned streams included)
    errors: int
    first_errors: list[str]
    latency_p50_s: float
    latency_p95_s: float
    rss_start_mib: float  # after the warm-up
    rss_end_mib: float  # after the server went idle again
    busy_slots_end: float
    queued_end: float
    max_rss_growth: float

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mib / self.rss_start_mib - 1

    @property
    def problems(self) -> list[str]:
        found = []
        if self.errors:
            found.append(f"{self.errors} requests failed")
        if self.rss_growth > self.max_rss_growth:
            found.append(f"memory grew {self.rss_growth:.1%} (limit {self.max_rss_growth:.0%})")
        if self.busy_slots_end or self.queued_end:
            found.append(f"{self.busy_slots_end:.0f} slots busy and {self.queued_end:.0f} queued after the run")
        return found

    def to_dict(self) -> dict:
        return {**asdict(self), "rss_growth": round(self.rss_growth, 4), "problems": self.problems}


@dataclass
class _Target:
    url: str
    api_key: str
    max_tokens: int
    host: str = field(init=False)
    port: int = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url.rstrip("/"))
        self.host, self.port, self.prefix = parts.hostname or "127.0.0.1", parts.port or 80, parts.path

    def post(self, path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        conn.request("POST", self.prefix + path, json.dumps(body, ensure_ascii=False).encode(), headers)
        return conn, conn.getresponse()

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            conn.request("GET", self.prefix + path, headers={"Authorization": f"Bearer {self.api_key}"})
            response = conn.getresponse()
            if response.status != 200:
                raise ConnectionError(f"GET {path} answered HTTP {response.status}")
            return response.read().decode()
        finally:
            conn.close()


class _Failed(Exception):
    """A request whose answer is wrong: counted and reported, the run goes on."""


def _messages(rng: random.Random) -> list[dict[str, str]]:
    return [{"role": "user", "content": rng.choice(QUESTIONS)}]


def _json(target: _Target, path: str, body: dict) -> dict:
    conn, response = target.post(path, body)
    try:
        data = response.read()
        if response.status != 200:
            raise _Failed(f"{path}: HTTP {response.status} {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


def _sse_data(target: _Target, path: str, body: dict, stop_after: int | None = None) -> list[str]:
    """The `data:` fields of a stream; with `stop_after`, the client hangs up after that many lines."""
    conn, response = target.post(path, body)
    try:
        if response.status != 200:
            raise _Failed(f"{path} (stream): HTTP {response.status} {response.read()[:200]!r}")
        data = []
        for n, raw in enumerate(response):
            if stop_after is not None and n >= stop_after:
                hang_up(conn)
                return data
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].strip())
        return data
    finally:
        conn.close()


def hang_up(conn: http.client.HTTPConnection) -> None:
    """Leaves abruptly: a reset, as a killed client or a dropped network gives, not a polite close."""
    if conn.sock is not None:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _chat(target: _Target, rng: random.Random) -> None:
    body = _json(target, "/api/chat", {"messages": _messages(rng), "max_new_tokens": target.max_tokens})
    if not isinstance(body.get("response"), str) or body.get("finish_reason") not in ("stop", "length"):
        raise _Failed(f"/api/chat: unexpected answer {body!r:.200}")


def _chat_stream(target: _Target, rng: random.Random) -> None:
    body = {"messages": _messages(rng), "max_new_tokens": target.max_tokens, "stream": True}
    data = _sse_data(target, "/api/chat", body)
    if not data or "finish_reason" not in json.loads(data[-1]):
        raise _Failed(f"/api/chat (stream): no done event, last {data[-1:]!r:.200}")


def _openai_stream(target: _Target, rng: random.Random) -> None:
    answer = loadgen.chat(target.url, rng.randrange(1000), target.max_tokens, target.api_key)
    if answer.error:
        raise _Failed(f"/v1/chat/completions (stream): {answer.error}")


def _completion(target: _Target, rng: random.Random) -> None:
    body = {"model": "default", "prompt": "从前有一座山，", "max_tokens": target.max_tokens}
    body = _json(target, "/v1/completions", body)
    choice = body["choices"][0]
    if not isinstance(choice.get("text"), str) or choice.get("finish_reason") not in ("stop", "length"):
        raise _Failed(f"/v1/completions: unexpected answer {body!r:.200}")


def _json_schema(target: _Target, rng: random.Random) -> None:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "一个中国城市和它的人口，用 JSON 回答。"}],
        "max_tokens": 96,
        "temperature": rng.choice([0, 0.7, 1.0]),
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
    }
    choice = _json(target, "/v1/chat/completions", body)["choices"][0]
    if choice["finish_reason"] == "length":
        return  # cut by max_tokens: a correct answer, not a complete JSON value
    try:
        value = json.loads(choice["message"]["content"])
    except ValueError as error:
        raise _Failed(f"json_schema answer does not parse ({error}): {choice['message']['content']!r:.200}") from None
    if not isinstance(value, dict) or set(value) != {"city", "population"}:
        raise _Failed(f"json_schema answer does not match the schema: {value!r:.200}")


def _abandon(target: _Target, rng: random.Random) -> None:
    path = rng.choice(["/api/chat", "/v1/chat/completions"])
    body = {"messages": _messages(rng), "max_tokens": 4 * target.max_tokens, "stream": True}
    if path.startswith("/v1"):
        body["model"] = "default"
    _sse_data(target, path, body, stop_after=rng.randrange(0, 12))


KINDS: dict[str, Callable[[_Target, random.Random], None]] = {
    "chat": _chat,
    "chat_stream": _chat_stream,
    "openai_stream": _openai_stream,
    "completion": _completion,
    "json_schema": _json_schema,
    "abandoned_stream": _abandon,
}


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, kind: str, target: _Target, rng: random.Random) -> None:
        t0 = time.perf_counter()
        error = None
        try:
            KINDS[kind](target, rng)
        except _Failed as failed:
            error = str(failed)
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as failed:
            error = f"{kind}: {failed!r}"
        with self.lock:
            self.requests[kind] += 1
            if error:
                self.errors.append(error)
            elif kind != "abandoned_stream":
                self.latencies.append(time.perf_counter() - t0)


def server_state(url: str, api_key: str = "none") -> dict[str, float]:
    """RSS (MiB), busy slots and queued requests, summed over backends, from the server's /metrics. The
    RSS leaves out what the host-memory prompt cache holds: bounded by design, it is no leak."""
    target = _Target(url, api_key, 0)
    state = {"rss_mib": 0.0, "busy": 0.0, "queued": 0.0, "cached": 0.0}
    names = {"process_resident_memory_bytes": "rss_mib", "hychat_slots_busy": "busy", "hychat_queue_depth": "queued",
             "hychat_prompt_cache_bytes": "cached"}  # fmt: skip
    for line in target.get("/metrics").splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in names:
            state[names[name]] += float(line.split()[-1])
    state["rss_mib"] = (state["rss_mib"] - state.pop("cached")) / 2**20
    return state


def wait_idle(url: str, api_key: str = "none", timeout_s: float = 600) -> dict[str, float]:
    """The server's state once no request holds a slot or waits for one (or after `timeout_s`, which
    bounds a stuck slot, not a slow machine)."""
    deadline = time.monotonic() + timeout_s
    state = server_state(url, api_key)
    while (state["busy"] or state["queued"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        state = server_state(url, api_key)
    return state


def _run_clients(
    clients: int, body: Callable[[int, random.Random], object], seed: int, tick: Callable[[], None] = lambda: None
) -> None:
    """`body(i, rng)` in `clients` threads at once, each with its own seeded random source."""
    threads = [
        threading.Thread(target=body, args=(i, random.Random(seed * 1000 + i)), daemon=True) for i in range(clients)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        tick()


def soak(
    url: str,
    duration_s: float,
    clients: int = 4,
    max_tokens: int = 32,
    api_key: str = "none",
    seed: int = 0,
    max_rss_growth: float = 0.05,
    on_tick: Callable[[float, int], None] = lambda elapsed_s, served: None,
) -> SoakReport:
    """Runs the mixed traffic for `duration_s`, after a warm-up in which every client sends every kind
    once (so every slot has been used before memory is first read)."""
    target = _Target(url, api_key, max_tokens)
    warm = _Tally()
    _run_clients(clients, lambda i, rng: [warm.run(kind, target, rng) for kind in KINDS], seed)
    if warm.errors:
        raise ConnectionError(f"{url} failed the warm-up: {warm.errors[0]}")
    start = wait_idle(url, api_key)
    tally, deadline = _Tally(), time.monotonic() + duration_s

    def client(i: int, rng: random.Random) -> None:
        # Every kind first, each client starting at another, however slow the machine; then at random.
        kinds = list(KINDS)
        for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
            tally.run(kind, target, rng)
        while time.monotonic() < deadline:
            tally.run(rng.choice(kinds), target, rng)

    t0 = time.monotonic()
    _run_clients(clients, client, seed + 1, lambda: on_tick(time.monotonic() - t0, sum(tally.requests.values())))
    end = wait_idle(url, api_key)
    latencies = sorted(tally.latencies) or [float("nan")]
    return SoakReport(
        duration_s=round(time.monotonic() - t0, 1),
        clients=clients,
        requests=dict(sorted(tally.requests.items())),
        errors=len(tally.errors),
        first_errors=tally.errors[:10],
        latency_p50_s=round(statistics.median(latencies), 3),
        latency_p95_s=round(loadgen.percentile(latencies, 0.95), 3),
        rss_start_mib=round(start["rss_mib"], 1),
        rss_end_mib=round(end["rss_mib"], 1),
        busy_slots_end=end["busy"],
        queued_end=end["queued"],
        max_rss_growth=max_rss_growth,
    )
