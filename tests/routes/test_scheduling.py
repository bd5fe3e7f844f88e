"""Many clients on one server: a full line answers 429 at once, a client that leaves gives its slot
back, concurrent streams each get their own answer, and a conversation's next turn reuses its cache.
A real server with the embedded model and one slot, so that every effect is visible."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from app.bench.soak import server_state, wait_idle

STORY = [{"role": "user", "content": "Write a long story about a cat who lives in a library."}]


@pytest.fixture(scope="module")
def one_slot(start_server):
    return start_server({"HYCHAT_PARALLEL": "1", "HYCHAT_QUEUE_SIZE": "0"})


@pytest.fixture(scope="module")
def four_slots(start_server):
    return start_server({"HYCHAT_PARALLEL": "4", "HYCHAT_QUEUE_SIZE": "8"})


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _busy_slots(server) -> float:
    return server_state(server.url)["busy"]


def _wait_idle(server) -> None:
    """Until no request holds a slot or waits for one (a closed stream is dropped at the next step)."""
    state = wait_idle(server.url)
    assert (state["busy"], state["queued"]) == (0, 0)


def test_a_full_line_answers_429_with_retry_after_at_once(one_slot):
    with _client(one_slot) as client:
        running = client.chat.completions.create(model="default", messages=STORY, max_tokens=400, stream=True)
        next(iter(running))  # the only slot is generating now
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="default", messages=STORY, max_tokens=4)
        running.close()
    assert refused.value.response.headers["retry-after"].isdigit()
    assert refused.value.body["code"] == "queue_full"


def test_a_client_that_leaves_gives_its_slot_back(one_slot):
    _wait_idle(one_slot)
    with _client(one_slot) as client:
        stream = client.chat.completions.create(model="default", messages=STORY, max_tokens=400, stream=True)
        chunks = iter(stream)
        next(chunks), next(chunks)
        assert _busy_slots(one_slot) == 1
        stream.close()  # the connection drops mid-answer
        _wait_idle(one_slot)
        # With no queue at all, this is refused unless the slot really is free.
        answer = client.chat.completions.create(model="default", messages=STORY, max_tokens=4, temperature=0)
        assert answer.usage.completion_tokens == 4


def test_concurrent_streams_each_get_exactly_their_own_answer(four_slots):
    questions = ["你好，请介绍一下北京。", "What is 2 + 2?", "写一句关于春天的话。", "Name three colors.", "长城多长？"]
    questions *= 2
    with _client(four_slots) as client:

        def ask(question: str) -> str:
            messages = [{"role": "user", "content": question}]
            chunks = client.chat.completions.create(
                model="default", messages=messages, max_tokens=24, temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        alone = {q: ask(q) for q in set(questions)}
        together: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(questions[i]))) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert [together.get(i) for i in range(10)] == [alone[q] for q in questions]


def test_the_next_turn_reuses_the_cached_conversation(four_slots):
    with _client(four_slots) as client:
        history = [{"role": "user", "content": "你好！请用一句话介绍你自己。"}]
        first = client.chat.completions.create(model="default", messages=history, max_tokens=16, temperature=0)
        history += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "谢谢。再讲一个笑话。"},
        ]
        second = client.chat.completions.create(model="default", messages=history, max_tokens=16, temperature=0)
    # The first turn may already share the template's default system prompt with earlier requests.
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens - 1
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1
    metrics = httpx.get(f"{four_slots.url}/metrics").text
    assert 'hychat_prompt_cached_tokens_total{backend="llamacpp"} 0.0' not in metrics
