"""The batch engine's reports while it reads a prompt in batches (`return_progress`), and its count of
llama_decode calls, on real llama.cpp with the embedded model and a 32-token batch."""

from __future__ import annotations

import math

import pytest

from app.services.llamacpp_service import LlamaCppBackend
from app.types import GenerationRequest, SamplingParams

N_BATCH = 32
PROMPT = "the quick brown fox jumps over the lazy dog " * 8


@pytest.fixture(scope="module")
def decodes() -> list[int]:
    return []


@pytest.fixture(scope="module")
def backend(model_path, decodes) -> LlamaCppBackend:
    backend = LlamaCppBackend(on_decode=decodes.append)
    backend.load_model(model_path, n_ctx=512, parallel=1, n_batch=N_BATCH)
    return backend


def run(backend: LlamaCppBackend, progress: bool, n: int = 4) -> list:
    params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True, return_progress=progress)
    return list(backend.start(GenerationRequest(params, prompt=PROMPT)))


def test_a_long_prompt_is_reported_batch_by_batch_before_its_first_token(backend, decodes):
    backend.load_model(backend.info()["path"], n_ctx=512, parallel=1, n_batch=N_BATCH)  # an empty cache
    decodes.clear()
    events = run(backend, progress=True)
    reports = [e.progress for e in events if e.progress is not None]
    tokens = [e.token_id for e in events if e.token_id is not None]
    total = reports[0].total
    assert total > 2 * N_BATCH and all(r.total == total and r.cache == 0 for r in reports)
    # 0% when the request gets its slot, then after each batch; none once tokens come.
    assert [r.processed for r in reports] == [0, *range(N_BATCH, total, N_BATCH), total]
    times = [r.time_ms for r in reports]
    assert reports[0].prompt_ms == 0.0 and times == sorted(times) and reports[-1].prompt_ms > 0
    assert all(e.progress is None for e in events[len(reports) :]) and events[len(reports)].token_id is not None
    # One decode per batch of the prompt, then one per token after the first; one sequence each.
    assert decodes == [1] * (math.ceil(total / N_BATCH) + 3)
    assert tokens == [e.token_id for e in run(backend, progress=False) if e.token_id is not None]  # the same answer


def test_a_cached_prefix_is_reported_as_cache(backend):
    run(backend, progress=False)
    reports = [e.progress for e in run(backend, progress=True) if e.progress is not None]
    cache = reports[0].cache
    assert cache > 0 and reports[0].processed == cache and reports[-1].processed == reports[0].total
    assert all(r.cache == cache for r in reports)


def test_without_return_progress_no_report_is_sent(backend):
    assert all(e.progress is None for e in run(backend, progress=False))


def test_the_batch_holds_one_token_of_each_slot_at_least(model_path):
    backend = LlamaCppBackend()
    backend.load_model(model_path, n_ctx=256, parallel=4, n_batch=2)
    assert backend._model.engine.n_batch == 4
    assert backend.generate("Hello", max_new_tokens=2, temperature=0)
