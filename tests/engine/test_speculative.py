"""Speculative decoding on real llama.cpp with the embedded model: drafts from the request's own
tokens (prompt lookup) change how many tokens a step yields, never which tokens.

Prompt and answer stay within a slot's first 256 positions. There, llama.cpp's CPU kernels give a step
of several tokens exactly the logits of one-token steps (measured); beyond, its attention over more
than 256 cells takes another path for several query tokens than for one, which rounds differently
(as reading a prompt in other batches already does), so a near tie may go the other way."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from app.errors import ModelFileError
from app.pipeline.quantize import quantize
from app.services.chat import start_chat
from app.services.llamacpp_service import LlamaCppBackend
from app.types import GenerationRequest, SamplingParams, Speculation, TokenEvent

CODE = """def fibonacci(n: int) -> list[int]:
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]"""
POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
# Prompts whose answers repeat what they were given: drafts from the prompt are accepted.
QUOTE_CODE = f"Copy this code three times.\n\n{CODE}\n\nFirst copy:\n\n{CODE}\n\nSecond copy:\n\n"
QUOTE_POEM = f"请把下面的诗原样抄写三遍。\n\n{POEM}\n\n第一遍：{POEM}\n第二遍："
OFF = Speculation(type="none")


@pytest.fixture(scope="module")
def backend(model_path) -> LlamaCppBackend:
    backend = LlamaCppBackend()
    backend.load_model(model_path, n_ctx=1024, parallel=4, max_waiting=8)
    return backend


def _run(backend, prompt: str, spec: Speculation, n: int = 96, **params) -> list[TokenEvent]:
    # cache_prompt=False: a prompt read whole each time. A prefix reused from the slot is read in other
    # batches than a whole prompt, which rounds differently and may flip a near tie later on.
    params = {"temperature": 0.0, **params}
    sampling = SamplingParams(max_new_tokens=n, speculative=spec, cache_prompt=False, **params)
    return list(backend.start(GenerationRequest(sampling, prompt=prompt)))


def _ids(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


@pytest.mark.parametrize("prompt", [QUOTE_CODE, QUOTE_POEM], ids=["code", "chinese"])
def test_greedy_answers_are_the_same_with_drafts_as_without(backend, prompt):
    plain, drafted = _run(backend, prompt, OFF), _run(backend, prompt, Speculation())
    assert _ids(drafted) == _ids(plain)
    assert "".join(e.text for e in drafted) == "".join(e.text for e in plain)
    usage = drafted[-1].usage
    assert usage.completion_tokens == plain[-1].usage.completion_tokens
    # Drafts were verified and were the model's own tokens. (How many the engine verifies depends
    # on the step times it measures; the copy is so sure that any measure makes it verify some.)
    assert usage.accepted_tokens > 0
    assert usage.accepted_tokens <= usage.drafted_tokens
    assert plain[-1].usage.drafted_tokens == 0


# Short prompts that repeat themselves. A long prompt read in one batch with other sequences' tokens is
# cut into micro-batches by llama.cpp, which round differently from reading it alone (measured: a
# 123-token prompt read beside another sequence's 5 tokens moves its logits by up to 0.5), so the
# solo answers are compared with short prompts, as in test_batch.py.
SHORT = ["1 2 3 1 2 3 1 2 3", "春天春天春天春天", "abc abc abc abc", "The capital of France is"]


def test_four_concurrent_drafting_requests_each_give_their_solo_answer(backend):
    solo = [_ids(_run(backend, p, OFF, n=64)) for p in SHORT]
    results: dict[int, list[TokenEvent]] = {}

    def run(i: int) -> None:
        results[i] = _run(backend, SHORT[i], Speculation(), n=64)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(SHORT))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert [_ids(results[i]) for i in range(len(SHORT))] == solo
    assert sum(results[i][-1].usage.accepted_tokens for i in range(len(SHORT))) > 0


def test_sampled_answers_with_a_seed_are_the_same_with_drafts_as_without(backend):
    # The same sampler draws in the same order: each position is sampled once, as without drafts.
    drafted_any = 0
    for seed in range(4):
        params = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed}
        plain = _run(backend, QUOTE_POEM, OFF, **params)
        drafted = _run(backend, QUOTE_POEM, Speculation(), **params)
        assert _ids(drafted) == _ids(plain)
        drafted_any += drafted[-1].usage.drafted_tokens
    assert drafted_any > 0


def test_an_answer_ends_exactly_where_it_would_inside_an_accepted_draft(backend):
    plain = _ids(_run(backend, QUOTE_POEM, OFF, n=64))
    for n in (5, 17, 30):  # max_tokens falls inside a draft
        assert _ids(_run(backend, QUOTE_POEM, Speculation(), n=n)) == plain[:n]
    text = "".join(e.text for e in _run(backend, QUOTE_POEM, OFF, n=64))
    stop = text[20:23]  # a stop string inside the repeated poem
    with_stop = _run(backend, QUOTE_POEM, Speculation(), n=64, stop=(stop,))
    assert "".join(e.text for e in with_stop) == text[: text.index(stop)]
    assert with_stop[-1].finish_reason == "stop"


def test_an_answer_asked_again_is_drafted_from_the_engines_memory_and_counted_to_its_end(backend):
    prompt = "请用三句话介绍一下月亮。"  # an answer that repeats nothing of its prompt
    first = _run(backend, prompt, Speculation(), n=64)
    again = _run(backend, prompt, Speculation(), n=64)
    assert _ids(again) == _ids(first)
    usage = again[-1].usage
    # The memory drafts the first answer from its first token; every accepted token is counted,
    # those of the step that ends the answer too.
    assert usage.accepted_tokens >= usage.completion_tokens // 2, (first[-1].usage, usage)


def test_rejected_draft_tokens_leave_no_cells_behind(backend):
    """The slot holds exactly the answer's tokens afterwards: a follow-up that continues the
    answer reuses them and gives what a fresh read of the whole text gives."""
    prompt = QUOTE_CODE.replace("three", "four")  # asked first here: the engine's memory cannot draft its answer
    first = _run(backend, prompt, Speculation(), n=48)
    assert first[-1].usage.drafted_tokens > first[-1].usage.accepted_tokens  # some were rejected
    cached = max(s.n_cached for s in backend.slots())
    plain = _run(backend, prompt, OFF, n=48)
    assert max(s.n_cached for s in backend.slots()) == cached
    answer = "".join(e.text for e in plain)
    follow_up = SamplingParams(max_new_tokens=16, temperature=0.0, speculative=OFF)
    reused = list(backend.start(GenerationRequest(follow_up, prompt=prompt + answer)))
    assert reused[-1].usage.cached_tokens > len(_ids(plain)) // 2


def test_a_step_padded_to_a_cheaper_size_gives_the_same_answer_and_leaves_no_cells(model_path):
    """Steps of one sequence are padded to a larger size where that was measured to cost less. Told
    so here (a step of 2 measured at 100 ms, one of 63 at 30: the engine's own measures move these
    as it runs), the drafted steps are padded to 63 tokens, within the first cells where that keeps
    the logits of steps of one token; the pads' cells go with the rejected draft tokens'."""
    import llama_cpp

    backend = LlamaCppBackend()
    backend.load_model(model_path, n_ctx=512, parallel=1)
    try:
        plain = _run(backend, QUOTE_CODE, OFF)
        engine = backend._model.engine
        costs = engine._step_costs(1)
        for n, seconds in [(1, 0.010), (2, 0.100), (63, 0.030)]:
            costs.observe(n, seconds)
        drafted = _run(backend, QUOTE_CODE, Speculation())
        assert drafted[-1].usage.drafted_tokens > 0
        assert costs(63) > 0.030  # steps of 63 tokens were decoded and measured: padded ones
        assert _ids(drafted) == _ids(plain)
        (slot,) = backend.slots()
        assert llama_cpp.llama_memory_seq_pos_max(engine._memory, 0) == slot.n_cached - 1
    finally:
        backend.unload()


def test_speculation_off_or_with_a_high_n_min_drafts_nothing(backend):
    assert _run(backend, QUOTE_POEM, OFF)[-1].usage.drafted_tokens == 0
    assert _run(backend, QUOTE_POEM, Speculation(n_max=8, n_min=9))[-1].usage.drafted_tokens == 0


def test_a_request_that_gains_nothing_drafts_little(backend):
    # Sampled at a high temperature, an answer seldom repeats itself: its drafts at hand would mostly
    # be rejected, which the engine sees by checking them against the samples, so it verifies few.
    params = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 7}
    usage = _run(backend, "The weather today", Speculation(ngram_size_n=1), n=256, **params)[-1].usage
    assert usage.drafted_tokens < usage.completion_tokens / 4


# -- a draft model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def draft_path(model_path, tmp_path_factory) -> str:
    """The embedded model requantized to Q4_0 by the product's pipeline: its vocabulary, other weights."""
    out = tmp_path_factory.mktemp("draft") / "smollm2.q4_0.gguf"
    return str(quantize(Path(model_path), out, "q4_0", allow_requantize=True).path)


def test_a_draft_model_drafts_and_the_answers_stay_the_same(model_path, draft_path):
    backend = LlamaCppBackend()
    backend.load_model(model_path, n_ctx=1024, parallel=4, draft_model_path=draft_path)
    try:
        assert backend.info()["draft_model"] == draft_path
        draft = Speculation(type="draft")
        first = _run(backend, QUOTE_POEM, draft)
        # A fresh engine has not measured what a draft token costs: its first answer drafts.
        assert first[-1].usage.drafted_tokens > 0
        for prompt in (QUOTE_POEM, QUOTE_CODE):
            plain = _ids(_run(backend, prompt, OFF))
            assert _ids(_run(backend, prompt, draft)) == plain
        assert _ids(first) == _ids(_run(backend, QUOTE_POEM, OFF))
        # Four at once, the draft model drafting for each slot in its own context.
        solo = [_ids(_run(backend, p, OFF, n=48)) for p in SHORT]
        results: dict[int, list[int]] = {}
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, _ids(_run(backend, SHORT[i], draft, n=48))))
            for i in range(len(SHORT))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert [results[i] for i in range(len(SHORT))] == solo
    finally:
        backend.unload()


def test_a_draft_model_of_another_vocabulary_or_a_damaged_one_is_refused(model_path, coder_gguf, tmp_path):
    backend = LlamaCppBackend()
    with pytest.raises(ModelFileError, match="vocabulary"):
        backend.load_model(model_path, n_ctx=256, draft_model_path=str(coder_gguf))
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(Path(model_path).read_bytes()[:4096])
    with pytest.raises(ModelFileError):
        backend.load_model(model_path, n_ctx=256, draft_model_path=str(damaged))
    assert backend._model is None  # nothing half loaded


def test_without_a_draft_model_type_draft_drafts_by_prompt_lookup(backend):
    drafted = _run(backend, QUOTE_POEM, Speculation(type="draft"))
    assert _ids(drafted) == _ids(_run(backend, QUOTE_POEM, OFF))
    assert drafted[-1].usage.accepted_tokens > 0


def test_a_streams_tokens_decoded_in_one_step_come_as_one_delta_and_make_the_same_answer(backend):
    """Read through the chat path from a coroutine (as every route reads), the tokens a step accepts
    arrive together and come as one delta (one frame on the wire); a request with logprobs keeps
    one delta per token. Either way the answer is the one read token by token."""

    async def deltas(**params):
        sampling = SamplingParams(max_new_tokens=96, temperature=0.0, cache_prompt=False, **params)
        return [d async for d in start_chat(backend, GenerationRequest(sampling, prompt=QUOTE_CODE))]

    plain = _run(backend, QUOTE_CODE, OFF)
    joined = asyncio.run(deltas(speculative=Speculation()))
    assert [t for d in joined for t in d.tokens] == _ids(plain)
    assert "".join(d.content for d in joined) == "".join(e.text for e in plain)
    # The copy is accepted several tokens a step (how many depends on the step costs measured as it runs).
    assert len(joined) < len(_ids(plain)) and max(len(d.tokens) for d in joined) > 1
    with_logprobs = asyncio.run(deltas(speculative=Speculation(), logprobs=0))
    assert [len(d.tokens) for d in with_logprobs[:-1]] == [1] * len(_ids(plain))
