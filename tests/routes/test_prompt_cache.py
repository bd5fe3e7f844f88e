"""The host-memory prompt cache through a real server on llama.cpp (llama-server's --cache-ram): with
more conversations than slots, a slot's KV state is saved to RAM when another conversation takes the
slot, and restored when its own returns, so the next turn reads only its new tokens. Answers are the
same as without the cache; the cache keeps to its bound. Its disk tier keeps what the RAM lets go,
and everything across a restart."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

TOPICS = ["长城", "黄河", "长江"]  # three conversations on two slots


def conversations(url: str) -> list[tuple[int, int, str]]:
    """Two turns of each conversation, round-robin: (prompt tokens, cached tokens, answer) of each."""
    history = {t: [{"role": "user", "content": f"请介绍一下中国的{t}，写长一点。"}] for t in TOPICS}
    return talk(url, history) + talk(url, history)


def talk(url: str, history: dict[str, list]) -> list[tuple[int, int, str]]:
    """One turn of each conversation, its answer added to its history."""
    turns = []
    for topic in TOPICS:
        body = {"messages": history[topic], "max_tokens": 16, "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        usage, text = r.json()["usage"], r.json()["choices"][0]["message"]["content"]
        turns.append((usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], text))
        history[topic] += [{"role": "assistant", "content": text}, {"role": "user", "content": "继续。"}]
    return turns


def held_bytes(url: str) -> float:
    """What the cache holds, from /metrics."""
    metrics = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^hychat_prompt_cache_bytes (\S+)$", metrics, re.M).group(1))


def bound_bytes(url: str) -> int:
    return httpx.get(f"{url}/api/info").json()["backends"]["llamacpp"]["host_cache_bytes"]


@pytest.fixture(scope="module")
def without_cache(start_server) -> list[tuple[int, int, str]]:
    return conversations(start_server({"HYCHAT_PARALLEL": "2", "HYCHAT_CACHE_RAM_MIB": "0"}).url)


def test_a_returning_conversation_reads_only_its_new_tokens_and_answers_the_same(start_server, without_cache):
    server = start_server({"HYCHAT_PARALLEL": "2"})  # the default cache, 512 MiB
    turns = conversations(server.url)
    assert [text for *_, text in turns] == [text for *_, text in without_cache]
    first, second = turns[:3], turns[3:]
    for (prompt, _, _), (_, cached, _) in zip(first, second, strict=True):
        assert cached >= prompt  # the whole first turn (and the answer's tokens) came back from RAM
    # Without the cache, the third conversation took a slot from the first: its history is read again.
    assert without_cache[3][1] < without_cache[0][0]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert float(re.search(r"^hychat_prompt_cache_restores_total (\S+)$", metrics, re.M).group(1)) >= 3
    assert 0 < held_bytes(server.url) <= bound_bytes(server.url) == 512 << 20


def test_the_cache_keeps_to_its_bound(start_server, without_cache):
    """4 MiB holds two first turns (about 80 of SmolLM2's tokens each, 23040 bytes a token) but not
    every state the conversations leave: the least recently used go, and some second turn is read
    whole again. The answers stay the same."""
    server = start_server({"HYCHAT_PARALLEL": "2", "HYCHAT_CACHE_RAM_MIB": "4"})
    turns = conversations(server.url)
    assert [text for *_, text in turns] == [text for *_, text in without_cache]
    first, second = turns[:3], turns[3:]
    restored = [cached >= prompt for (prompt, _, _), (_, cached, _) in zip(first, second, strict=True)]
    assert True in restored and False in restored
    assert 0 < held_bytes(server.url) <= bound_bytes(server.url) == 4 << 20


def test_the_disk_tier_keeps_what_the_ram_lets_go(start_server, without_cache, tmp_path):
    """The 4 MiB of RAM above lose a state; 64 MiB of disk behind them keep it: every second turn is restored."""
    env = {"HYCHAT_PARALLEL": "2", "HYCHAT_CACHE_RAM_MIB": "4", "HYCHAT_CACHE_DISK_DIR": str(tmp_path)}
    server = start_server(env | {"HYCHAT_CACHE_DISK_MIB": "64"})
    turns = conversations(server.url)
    assert [text for *_, text in turns] == [text for *_, text in without_cache]
    for (prompt, _, _), (_, cached, _) in zip(turns[:3], turns[3:], strict=True):
        assert cached >= prompt
    disk = httpx.get(f"{server.url}/api/info").json()["backends"]["llamacpp"]["host_cache_disk"]
    assert disk["bytes"] == 64 << 20 and Path(disk["path"]).parent == tmp_path
    assert 0 < sum(f.stat().st_size for f in Path(disk["path"]).iterdir()) <= 64 << 20


def test_states_outlive_a_restart_and_a_damaged_file_is_read_whole(start_server, without_cache, tmp_path):
    """A server stopped after the first turns leaves their states on disk; the next one, on the same
    folder, restores them for the second turns, except one whose file was damaged meanwhile: that
    conversation is read whole, its file removed. The answers are those of a server without a cache."""
    env = {"HYCHAT_PARALLEL": "2", "HYCHAT_CACHE_DISK_DIR": str(tmp_path)}
    history = {t: [{"role": "user", "content": f"请介绍一下中国的{t}，写长一点。"}] for t in TOPICS}
    first_server = start_server(env)
    first = talk(first_server.url, history)
    first_server.stop()
    [folder] = tmp_path.iterdir()
    files = sorted(folder.iterdir())
    assert len(files) == 3 and all(f.suffix == ".state" for f in files)
    damaged = bytearray(files[0].read_bytes())
    damaged[-100] ^= 0xFF
    files[0].write_bytes(damaged)

    second = talk(start_server(env).url, history)
    assert [text for *_, text in first + second] == [text for *_, text in without_cache]
    restored = [cached >= prompt for (prompt, _, _), (_, cached, _) in zip(first, second, strict=True)]
    assert sorted(restored) == [False, True, True]
    assert not files[0].exists()
