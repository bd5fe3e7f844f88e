"""A real server under more clients than it has room for, and under clients that walk away.

4 slots and 8 places in line, the embedded model, greedy answers: an admitted request must answer
exactly what the same question gets alone, a refused one must be refused at once (while the admitted
ones are still generating), and afterwards no slot may stay busy and the server's memory must be back
at its idle level. Traffic goes only to the server the test starts on 127.0.0.1, bounded in count.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass

import pytest

from app.bench.soak import hang_up, wait_idle

QUESTIONS = ["你好，请介绍一下北京。", "写一首关于春天的短诗。", "Tell me a story about a dragon.", "长城有多长？"]
SLOTS, QUEUE = 4, 8
MAX_TOKENS = 48
TIMEOUT_S = 300  # a request that takes longer than this has hung


@pytest.fixture(scope="module")
def server(start_server):
    return start_server({"HYCHAT_PARALLEL": str(SLOTS), "HYCHAT_QUEUE_SIZE": str(QUEUE)})


@dataclass
class Outcome:
    status: int
    answered_s: float  # when the status line arrived
    finished_s: float  # when the answer was complete
    text: str = ""
    finish_reason: str | None = None
    retry_after: str | None = None
    error: str | None = None


def stream_chat(server, question: str, max_tokens: int = MAX_TOKENS) -> Outcome:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    body = json.dumps(
        {"model": "default", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
         "temperature": 0, "stream": True},
        ensure_ascii=False,
    ).encode()  # fmt: skip
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        outcome = Outcome(response.status, time.monotonic(), 0, retry_after=response.getheader("Retry-After"))
        if response.status != 200:
            outcome.text = response.read().decode()
        else:
            pieces = []
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[5:])["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
                    outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
            outcome.text = "".join(pieces)
        outcome.finished_s = time.monotonic()
        return outcome
    except (OSError, http.client.HTTPException) as error:
        return Outcome(0, 0, time.monotonic(), error=repr(error))
    finally:
        conn.close()


def _concurrently(n: int, work) -> list:
    """`work(i)` in n threads released together."""
    results: list = [None] * n
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S + 60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return results


@pytest.fixture(scope="module")
def alone(server) -> dict[str, str]:
    """Each question's greedy answer with the server to itself."""
    answers = {q: stream_chat(server, q) for q in QUESTIONS}
    assert all(a.status == 200 and a.text for a in answers.values())
    return {q: a.text for q, a in answers.items()}


@pytest.fixture(scope="module")
def idle_rss_mib(server, alone) -> float:
    """The server's memory once every slot has been used once, then left idle."""
    _concurrently(SLOTS, lambda i: stream_chat(server, QUESTIONS[i % len(QUESTIONS)]))
    return wait_idle(server.url)["rss_mib"]


def _assert_back_to_idle(server, idle_rss_mib: float) -> dict[str, float]:
    state = wait_idle(server.url)
    assert (state["busy"], state["queued"]) == (0, 0)
    assert abs(state["rss_mib"] / idle_rss_mib - 1) <= 0.10, (state["rss_mib"], idle_rss_mib)
    return state


def test_64_clients_on_4_slots_complete_correctly_or_are_refused_at_once(server, alone, idle_rss_mib):
    outcomes = _concurrently(64, lambda i: stream_chat(server, QUESTIONS[i % len(QUESTIONS)]))

    assert [o.error for o in outcomes if o.error] == []
    assert {o.status for o in outcomes} <= {200, 429}
    admitted = [(i, o) for i, o in enumerate(outcomes) if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    assert len(admitted) >= SLOTS and refused, (len(admitted), len(refused))
    for i, o in admitted:
        assert o.text == alone[QUESTIONS[i % len(QUESTIONS)]] and o.finish_reason in ("stop", "length")
    for o in refused:
        assert o.retry_after and o.retry_after.isdigit()
        assert json.loads(o.text)["error"]["code"] == "queue_full"
    # At once: every refusal came while the admitted answers were still being written.
    assert max(o.answered_s for o in refused) < min(o.finished_s for _, o in admitted)
    state = _assert_back_to_idle(server, idle_rss_mib)
    rss = f"RSS {idle_rss_mib:.1f} -> {state['rss_mib']:.1f} MiB"
    print(f"overload: {len(admitted)} admitted, {len(refused)} refused; {rss}")


def _drop(server, plan: tuple[str, str, int, bool]) -> str:
    """A client that leaves: after sending its request (lines == -1), after the status line
    (lines == 0) or after some lines of the stream; with a reset (as a killed process) or a close."""
    path, question, lines, reset = plan
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 400, "temperature": 0, "stream": True}
    if path.startswith("/v1"):
        body["model"] = "default"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    conn.request("POST", path, json.dumps(body, ensure_ascii=False).encode(), {"Content-Type": "application/json"})
    status = "sent"
    if lines >= 0:
        response = conn.getresponse()
        status = str(response.status)
        for _ in range(lines):
            response.readline()
    if reset:
        hang_up(conn)
    conn.sock.close()
    return status


def test_50_clients_that_walk_away_leave_no_busy_slot_and_no_leak(server, alone, idle_rss_mib):
    rng = random.Random(8)
    plans = [
        (
            rng.choice(["/api/chat", "/v1/chat/completions"]),
            rng.choice(QUESTIONS),
            rng.choice([-1, 0, rng.randrange(1, 30)]),  # before the status line, at it, mid-stream
            rng.random() < 0.5,
        )
        for _ in range(50)
    ]
    pending, lock = list(plans), threading.Lock()

    def client(i: int) -> list[str]:
        done = []
        while True:
            with lock:
                if not pending:
                    return done
                plan = pending.pop()
            done.append(_drop(server, plan))

    # 8 at a time: 4 generating and 4 waiting, so some leave while still in line.
    statuses = [s for batch in _concurrently(SLOTS + 4, client) for s in batch]
    assert len(statuses) == 50 and set(statuses) <= {"sent", "200"}

    state = _assert_back_to_idle(server, idle_rss_mib)
    print(f"disconnects: {statuses.count('sent')} left before the status line, {statuses.count('200')} after it; "
          f"RSS {idle_rss_mib:.1f} -> {state['rss_mib']:.1f} MiB")  # fmt: skip
    for question in QUESTIONS:  # still serving, and serving the same answers
        assert stream_chat(server, question).text == alone[question]
    assert server.process.poll() is None
