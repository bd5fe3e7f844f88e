"""The host prompt cache's disk tier on its own: real files in a temporary folder, states as plain bytes
(the engine's llama.cpp states go through it in tests/routes/test_prompt_cache.py)."""

from __future__ import annotations

from pathlib import Path

from app.engine.prompt_cache import PromptCache, SavedState
from app.engine.state_files import StateFiles

KIB = 1024


def data(seed: int, size: int = 10 * KIB) -> bytearray:
    return bytearray((seed + i) % 251 for i in range(size))


def on_disk(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_a_state_written_comes_back_whole_and_leaves_the_folder(tmp_path):
    files = StateFiles(tmp_path, 100 * KIB)
    files.write((1, 2, 3), (), data(1))
    assert files.best([1, 2, 3, 4], ((("other.gguf|1|1", 1.0),))) == (None, 0)  # another adapter set
    entry, shared = files.best([1, 2, 3, 4], ())
    assert shared == 3 and entry.tokens == (1, 2, 3)
    assert bytes(files.take(entry)) == bytes(data(1))
    assert on_disk(tmp_path) == [] and len(files) == 0 and files.used_bytes == 0


def test_the_folder_keeps_to_its_bound_and_a_conversation_keeps_its_latest_state(tmp_path):
    files = StateFiles(tmp_path, 35 * KIB)  # three states of 10 KiB and their headers
    for seed, tokens in enumerate([(1, 2), (3, 4), (5, 6), (7, 8)]):
        files.write(tokens, (), data(seed))
    assert files.best([1, 2], ())[0] is None  # the least recently written went for the fourth
    assert len(files) == 3 and files.used_bytes == sum(p.stat().st_size for p in on_disk(tmp_path)) <= 35 * KIB
    files.write((3, 4, 9, 9), (), data(9))  # the same conversation, further on: replaces (3, 4)
    assert len(files) == 3 and files.best([3, 4, 9, 9], ())[0].tokens == (3, 4, 9, 9)
    files.write((0,), (), data(0, 40 * KIB))  # larger than the whole bound: not kept, nothing dropped for it
    assert len(files) == 3 and len(on_disk(tmp_path)) == 3


def test_a_restart_finds_the_states_and_removes_what_is_damaged_or_half_written(tmp_path):
    files = StateFiles(tmp_path, 100 * KIB)
    adapters = (("lora.gguf|10|5", 0.5),)
    for seed, tokens in enumerate([(1, 2), (3, 4), (5, 6)]):
        files.write(tokens, adapters, data(seed))
    [one, two, three] = sorted(on_disk(tmp_path), key=lambda p: p.stat().st_mtime_ns)
    one.write_bytes(b"not a state")  # a damaged header: removed as the folder is read
    flipped = bytearray(two.read_bytes())
    flipped[-1] ^= 0xFF  # damaged data: found when the state is read
    two.write_bytes(flipped)
    (tmp_path / "a.tmp").write_bytes(b"a write cut short")

    again = StateFiles(tmp_path, 100 * KIB)
    assert sorted(on_disk(tmp_path)) == sorted([two, three]) and len(again) == 2
    entry, shared = again.best([3, 4, 0], adapters)
    assert shared == 2 and again.take(entry) is None and not two.exists()  # ignored and removed
    entry, _ = again.best([5, 6], adapters)
    assert bytes(again.take(entry)) == bytes(data(2))


def test_the_ram_cache_spills_what_it_lets_go_and_gets_it_back(tmp_path):
    """The RAM holds two states; the third sends the least recently used to disk, whence a prompt
    that extends it brings it back. Closing spills the rest. Adapter ids are written by name."""
    names = {(): (), ((0, 1.0),): (("adapter-0", 1.0),)}
    cache = PromptCache(25 * KIB, StateFiles(tmp_path, 100 * KIB), names.__getitem__)
    for seed, tokens in enumerate([(1, 2), (3, 4), (5, 6)]):
        cache.put(SavedState(tokens, (), data(seed)))
    assert len(cache) == 2 and len(cache.files) == 1  # (1, 2) went to disk
    state, shared = cache.best([1, 2, 7], ())
    assert shared == 2 and bytes(state.data) == bytes(data(0))
    assert len(cache) == 2 and len(cache.files) == 1  # back in RAM; (3, 4) went to disk in its place
    cache.put(SavedState((9,), ((0, 1.0),), data(9)))
    cache.close()
    assert len(cache) == 0 and cache.used_bytes == 0 and len(cache.files) == 4
    reopened = StateFiles(tmp_path, 100 * KIB)
    assert reopened.best([9], (("adapter-0", 1.0),))[1] == 1 and reopened.best([9], ())[1] == 0
