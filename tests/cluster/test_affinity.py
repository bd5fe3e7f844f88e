"""The routing policy as plain functions: what a request's prompt is, what each replica was sent, and
which replica a request goes to."""

from __future__ import annotations

import json

from app.cluster.affinity import MAX_KEY_CHARS, PrefixIndex, prompt_key, ranked


def key(**body: object) -> str:
    return prompt_key(json.dumps(body, ensure_ascii=False).encode())


def test_a_later_turn_extends_the_earlier_turns_key_in_every_dialect():
    turn1 = [{"role": "user", "content": "你好，请介绍一下长城。"}]
    turn2 = [*turn1, {"role": "assistant", "content": "长城是……"}, {"role": "user", "content": "它有多长？"}]
    for field in ("messages", "input"):  # OpenAI, Ollama, Anthropic; the Responses API
        first, later = key(model="m", **{field: turn1}), key(model="m", **{field: turn2})
        assert first and later.startswith(first) and later != first
    # Anthropic's system comes before the messages in the template, and in the key.
    assert key(model="m", system="简短回答", messages=turn2).startswith(
        key(model="m", system="简短回答", messages=turn1)
    )
    # Content as parts is the same text as content as a string, part by part.
    parts = [{"role": "user", "content": [{"type": "text", "text": "你好，请介绍一下长城。"}]}]
    assert key(model="m", messages=parts).endswith("你好，请介绍一下长城。\x1f")


def test_the_key_tells_models_and_word_boundaries_apart():
    assert key(model="a", prompt="hello") != key(model="b", prompt="hello")
    assert key(model="a", messages=[{"content": "ab"}, {"content": "c"}]) != key(
        model="a", messages=[{"content": "a"}, {"content": "bc"}]
    )


def test_a_body_without_a_prompt_has_no_key_and_a_long_one_is_bounded():
    assert prompt_key(b"") == prompt_key(b"not json") == prompt_key(b"[1, 2]") == key(model="m") == ""
    assert len(key(model="m", prompt="长" * (MAX_KEY_CHARS + 10))) == MAX_KEY_CHARS


def test_a_replica_holds_the_prompts_this_one_extends_or_a_long_shared_beginning():
    index = PrefixIndex(min_shared_chars=20)
    index.record("r1", "m\x00你好，世界\x1f")
    index.record("r2", "m\x00你好，朋友\x1f")
    index.record("r2", "")  # a request without a prompt teaches nothing
    # r1 was sent all of this prompt's beginning (the conversation returns); r2 only a few characters.
    assert index.matches("m\x00你好，世界\x1f再见\x1f") == {"r1": len("m\x00你好，世界\x1f"), "r2": 0}
    assert index.matches("") == {}
    system = "m\x00" + "你是一个乐于助人的助手。" * 2  # a shared system prompt long enough to count
    index.record("r3", system + "甲问题")
    assert index.matches(system + "乙问题")["r3"] == len(system)
    index.drop("r1")
    assert set(index.matches("m\x00x")) == {"r2", "r3"}


def test_a_conversations_latest_turn_replaces_its_earlier_ones_and_the_index_is_bounded():
    index = PrefixIndex(per_replica=3)
    index.record("r", "a")
    index.record("r", "ab")
    index.record("r", "abc")
    assert index.matches("abcd") == {"r": 3}
    assert index.replicas() == ["r"] and len(index._sent["r"]) == 1  # the replica keeps the latest state
    for other in ("x", "y", "z"):
        index.record("r", other)
    assert index.matches("abcd") == {"r": 0}  # the least recently sent went first


def test_the_replicas_holding_most_go_first_unless_much_busier():
    replicas = ["r1", "r2", "r3"]
    matches = {"r1": 10, "r2": 500, "r3": 0}
    assert ranked(replicas, {"r1": 0, "r2": 3, "r3": 0}, matches, max_extra_load=4)[0] == ["r2"]
    # Much busier than the lightest: the least loaded go first, the affinity is given up.
    assert ranked(replicas, {"r1": 0, "r2": 5, "r3": 1}, {"r2": 500}, max_extra_load=4) == [["r1", "r3", "r2"]]
    # Equal holders are one rank (Ray takes the shorter queue of them); holding nothing is no preference.
    assert sorted(ranked(replicas, {}, {"r1": 7, "r2": 7}, max_extra_load=4)[0]) == ["r1", "r2"]
    ranks = ranked(replicas, {}, {"r3": 0}, max_extra_load=4)
    assert len(ranks) == 1 and sorted(ranks[0]) == replicas
    assert ranked([], {}, {}, 1) == []


def test_equal_replicas_share_the_work():
    firsts = {ranked(["r1", "r2"], {}, {}, 4)[0][0] for _ in range(200)}
    assert firsts == {"r1", "r2"}
