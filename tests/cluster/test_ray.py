"""The same API on a Ray cluster: `hychat serve --ray local` starts a Ray cluster on 127.0.0.1, two
replicas of the embedded model with one thread each behind the gateway, the way a user starts it.
Every dialect answers through it, streams included, as the single process does; a conversation's later
turns go to the replica holding its earlier ones; a replica killed mid-stream ends its streams with an
error and nothing else."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import anthropic
import httpx
import ollama
import openai
import pytest

QUESTION = "请用一句话介绍一下长城。"
KEY = "cluster-key-1"  # every route of every replica is behind it, as on one server
AUTH = {"Authorization": f"Bearer {KEY}"}
REPLACEMENT_BOUND_S = 300  # bounds a replacement that never comes, not a speed
CLUSTER = ("--ray", "local", "--replicas", "2", "--threads", "1")


@pytest.fixture(scope="module")
def cluster(start_server):
    return start_server({"HYCHAT_API_KEY": KEY}, *CLUSTER)


def chat(url: str, messages: list[dict], max_tokens: int = 24) -> httpx.Response:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r


def test_a_greedy_answer_equals_the_single_process_one(cluster, start_server):
    single = start_server({}, "--threads", "1")
    messages = [{"role": "user", "content": QUESTION}]
    through_ray = chat(cluster.url, messages)
    assert through_ray.headers["x-hychat-replica"]
    answer = through_ray.json()["choices"][0]["message"]["content"]
    assert answer and answer == chat(single.url, messages).json()["choices"][0]["message"]["content"]


def test_every_dialect_answers_and_streams(cluster):
    messages = [{"role": "user", "content": QUESTION}]
    model = httpx.get(f"{cluster.url}/v1/models", headers=AUTH, timeout=30).json()["data"][0]["id"]
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0, stream=True) if c.choices]  # fmt: skip
    assert len(pieces) > 1 and "".join(pieces)
    events = list(client.responses.create(model=model, input=QUESTION, max_output_tokens=16, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text  # cut at 16 tokens

    with anthropic.Anthropic(base_url=cluster.url, api_key=KEY, max_retries=0, timeout=120) as claude:
        with claude.messages.stream(model=model, max_tokens=16, messages=messages) as stream:
            assert "".join(stream.text_stream)
            assert stream.get_final_message().usage.output_tokens > 0

    lines = list(ollama.Client(host=cluster.url, headers=AUTH, timeout=120).chat(
        model=model, messages=messages, stream=True, options={"num_predict": 16}))  # fmt: skip
    assert lines[-1].done and "".join(line.message.content for line in lines)

    with httpx.stream("POST", f"{cluster.url}/completion", json={"prompt": QUESTION, "n_predict": 8, "stream": True},
                      headers=AUTH, timeout=120) as r:  # fmt: skip
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1]["stop"] and "".join(f["content"] for f in frames)
    assert httpx.get(f"{cluster.url}/", timeout=30).text.count("<html") == 1  # the chat page


def test_the_api_key_guards_every_dialect_through_the_gateway(cluster):
    body = {"model": "any", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
    r = httpx.post(f"{cluster.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(f"{cluster.url}/v1/messages", json=body, headers={"x-api-key": "wrong"}, timeout=30)
    assert r.status_code == 401 and r.json()["type"] == "error"  # Anthropic's shape
    r = httpx.post(f"{cluster.url}/api/chat", json=body, timeout=30)
    assert r.status_code == 401 and set(r.json()) == {"error"}  # Ollama's shape
    assert httpx.get(f"{cluster.url}/metrics", timeout=30).status_code == 401  # every replica's, as one
    assert httpx.get(f"{cluster.url}/health", timeout=30).status_code == 200  # the probes stay open


def test_a_conversations_later_turns_go_to_the_replica_holding_it(cluster):
    """8 conversations of 4 turns, round-robin: each later turn lands where the earlier ones did, and
    reads only its new tokens (its whole previous prompt is cached there)."""
    history = {i: [{"role": "user", "content": f"第{i}个问题：请介绍一下中国的第{i}大城市。"}] for i in range(8)}
    replica: dict[int, str] = {}
    last_prompt: dict[int, int] = {}
    for turn in range(4):
        for i in range(8):
            r = chat(cluster.url, history[i], max_tokens=8)
            usage, text = r.json()["usage"], r.json()["choices"][0]["message"]["content"]
            if turn:
                assert r.headers["x-hychat-replica"] == replica[i], f"conversation {i}, turn {turn + 1}"
                assert usage["prompt_tokens_details"]["cached_tokens"] >= last_prompt[i]
            replica[i], last_prompt[i] = r.headers["x-hychat-replica"], usage["prompt_tokens"]
            history[i] += [{"role": "assistant", "content": text}, {"role": "user", "content": "再说一点。"}]
    assert len(set(replica.values())) == 2  # and the conversations were spread over both replicas


def test_a_client_that_leaves_stops_its_generation_on_the_replica(cluster):
    """The disconnect crosses the gateway: the replica stops decoding long before the 1500 tokens asked."""
    before = idle_predicted_tokens(cluster.url)
    body = {"messages": [{"role": "user", "content": "请写一篇很长的文章。"}], "max_tokens": 1500, "temperature": 0,
            "stream": True, "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
        replica = r.headers["x-hychat-replica"]
        next(line for line in r.iter_lines() if line.startswith("data: "))
    after = idle_predicted_tokens(cluster.url)
    assert after[replica] - before[replica] < 500


def idle_predicted_tokens(url: str) -> dict[str, float]:
    """Each replica's llamacpp:tokens_predicted_total once they process nothing: the gateway's /metrics
    has every replica's samples, labelled with the replica."""
    deadline = time.monotonic() + REPLACEMENT_BOUND_S
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        metric: dict[str, dict[str, float]] = {}
        for name, replica, value in re.findall(r'^llamacpp:(\w+)\{replica="([^"]+)"\} (\S+)$', r.text, re.M):
            metric.setdefault(name, {})[replica] = float(value)
        assert len(metric["requests_processing"]) == 2  # both replicas in one scrape
        if not any(metric["requests_processing"].values()):
            return metric["tokens_predicted_total"]
        time.sleep(0.1)
    raise AssertionError("the replicas did not go idle")


def test_a_replica_killed_mid_stream_ends_only_its_streams(cluster):
    """4 streams over 2 replicas; one replica's process is killed once all have started: its streams end
    with OpenAI's in-band error, the other replica's complete, and new requests are answered."""
    started = threading.Barrier(5)
    results: list[tuple[str, list[dict]]] = [("", [])] * 4

    def stream(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"请写一篇关于第{i}个季节的长文章。"}], "max_tokens": 400,
                "temperature": 0, "stream": True, "ignore_eos": True}  # fmt: skip
        with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=300) as r:
            frames, waiting = [], True
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    frames.append(json.loads(line[6:]))
                    if waiting:
                        started.wait(timeout=120)
                        waiting = False
            results[i] = (r.headers["x-hychat-replica"], frames)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    victim = replica_pids()[0]
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=300)
    failed = {replica for replica, frames in results if "error" in frames[-1]}
    finished = {replica for replica, frames in results if frames[-1].get("choices", [{}])[0].get("finish_reason")}
    assert len(failed) == 1 and len(finished) == 1 and failed != finished, results
    assert "replica" in next(f for r, fs in results for f in fs if "error" in f)["error"]["message"]
    chat(cluster.url, [{"role": "user", "content": QUESTION}])  # the others answer at once
    before = {replica for replica, _ in results}
    deadline = time.monotonic() + REPLACEMENT_BOUND_S
    while time.monotonic() < deadline:  # until the replacement Ray starts answers too
        question = [{"role": "user", "content": f"{time.monotonic()}{QUESTION}"}]  # no prefix: any replica
        if chat(cluster.url, question, max_tokens=2).headers["x-hychat-replica"] not in before:
            return
        time.sleep(0.5)
    pytest.fail(f"no replacement replica answered within {REPLACEMENT_BOUND_S} s")


def replica_pids() -> list[int]:
    """The replicas' processes (Ray names them by their deployment)."""
    out = subprocess.run(["pgrep", "-f", "ServeReplica:hychat:replica"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]
