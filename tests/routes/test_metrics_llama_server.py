"""llama-server's side of /metrics and of streamed completions: its `llamacpp:` series against what
the answers report, the Process-Start-Time-Unix header, the switch (--metrics / --no-metrics), and
`return_progress` / `timings_per_token` chunks, in process on real llama.cpp (the embedded model, one
slot, 32-token batches)."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.main import create_app
from app.services.llamacpp_service import LlamaCppBackend
from config.settings import Settings

N_BATCH = 32
PROMPT = "the quick brown fox jumps over the lazy dog " * 8
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def backend(model_path) -> LlamaCppBackend:
    backend = LlamaCppBackend(on_decode=metrics.record_decode)
    backend.load_model(model_path, n_ctx=512, parallel=1, n_batch=N_BATCH)
    return backend


@pytest.fixture(scope="module")
def client(backend):
    with TestClient(create_app(Settings(_env_file=None), backends={"llamacpp": backend})) as client:
        yield client


def series(client: TestClient) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    # llama-server's name, in its case: its test suite looks it up in a plain dict.
    assert int(dict(r.headers.raw)[b"Process-Start-Time-Unix"]) == metrics.START_TIME_S
    found = {}
    for line in r.text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split(" ")
            # Each sample has its own HELP and TYPE lines, under its own name.
            assert f"# HELP {name} " in r.text and f"# TYPE {name} " in r.text
            found[name.removeprefix("llamacpp:")] = float(value)
    assert len(found) == len(metrics.LLAMA_SERVER_SERIES)
    list(text_string_to_metric_families(r.text))  # hychat's own series and these still parse together
    return found


def events(client: TestClient, **body) -> list[dict]:
    with client.stream("POST", "/completion", json={"prompt": PROMPT, "stream": True, **body}) as r:
        assert r.status_code == 200
        return [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]


def test_the_llama_server_series_count_what_the_answers_report(client):
    before = series(client)
    body = {"prompt": PROMPT, "n_predict": 4, "speculative.type": "none", **GREEDY}  # a decode per token
    answers = [client.post("/completion", json=body).json() for _ in range(2)]
    after = series(client)
    delta = {name: after[name] - before[name] for name in after}
    timings = [answer["timings"] for answer in answers]
    assert timings[1]["cache_n"] > 0  # the second reuses the first one's prompt
    assert delta["prompt_tokens_total"] == sum(t["prompt_n"] for t in timings)
    assert delta["prompt_tokens_cached_total"] == sum(t["cache_n"] for t in timings)
    assert delta["tokens_predicted_total"] == 8
    # Each prompt batch is a decode, then each token after the first; one sequence in each.
    assert delta["n_decode_total"] == sum(math.ceil(t["prompt_n"] / N_BATCH) + 3 for t in timings)
    busy = (
        after["n_busy_slots_per_decode"] * after["n_decode_total"]
        - before["n_busy_slots_per_decode"] * before["n_decode_total"]
    )
    assert busy == pytest.approx(delta["n_decode_total"]) and after["requests_processing"] == 0
    assert after["prompt_seconds_total"] > before["prompt_seconds_total"] and after["prompt_tokens_seconds"] > 0
    assert after["n_tokens_max"] >= answers[0]["tokens_evaluated"] + 4
    assert series(client)["prompt_tokens_seconds"] == 0  # the rates are over the time since the last scrape


def test_without_metrics_the_route_is_a_501_as_llama_server_without_metrics(backend):
    settings = Settings(_env_file=None, endpoint_metrics=False)
    with TestClient(create_app(settings, backends={"llamacpp": backend})) as client:
        r = client.get("/metrics")
        assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
        assert client.get("/props").json()["endpoint_metrics"] is False


def test_a_streamed_completion_reports_its_prompt_batch_by_batch(client):
    chunks = events(client, n_predict=4, return_progress=True, timings_per_token=True, **GREEDY)
    progress = [c for c in chunks if "prompt_progress" in c]
    reports = [c["prompt_progress"] for c in progress]
    total = reports[0]["total"]
    assert total == chunks[-1]["tokens_evaluated"] and all(r["total"] == total for r in reports)
    cache = reports[0]["cache"]
    assert [r["processed"] for r in reports] == [cache, *range(cache + N_BATCH, total, N_BATCH), total]
    assert chunks[: len(progress)] == progress and all(c["content"] == "" for c in progress)  # before any token
    first = progress[0]["timings"]
    assert (first["prompt_n"], first["prompt_ms"], first["predicted_n"], first["predicted_ms"]) == (0, 0.0, 0, 0.0)
    prompt_ms = [c["timings"]["prompt_ms"] for c in progress]
    assert prompt_ms == sorted(prompt_ms) and prompt_ms[-1] > 0
    assert progress[-1]["timings"]["prompt_n"] == total - cache
    tokens = chunks[len(progress) : -1]
    assert [c["timings"]["predicted_n"] for c in tokens] == [1, 2, 3, 4] == [c["tokens_predicted"] for c in tokens]
    plain = events(client, n_predict=4, **GREEDY)  # neither asked: neither sent, and the same answer
    assert not any("prompt_progress" in c or "timings" in c for c in plain[:-1])
    assert [c["content"] for c in plain[:-1]] == [c["content"] for c in tokens]


def test_progress_is_sent_in_streams_only(client):
    body = {"prompt": PROMPT, "n_predict": 2, "return_progress": True, "timings_per_token": True, **GREEDY}
    answer = client.post("/completion", json=body).json()
    assert "prompt_progress" not in answer and answer["timings"]["predicted_n"] == 2


def test_the_speculative_series_count_the_drafts_the_answers_report(client):
    before = series(client)
    answers = [client.post("/completion", json={"prompt": PROMPT, "n_predict": 48, **GREEDY}).json() for _ in range(3)]
    after = series(client)
    timings = [answer["timings"] for answer in answers]
    drafted = sum(t.get("draft_n", 0) for t in timings)
    accepted = sum(t.get("draft_n_accepted", 0) for t in timings)
    assert drafted > 0  # the prompt repeats itself: its drafts are taken (on by default)
    assert after["spec_decode_num_draft_tokens_total"] - before["spec_decode_num_draft_tokens_total"] == drafted
    assert after["spec_decode_num_accepted_tokens_total"] - before["spec_decode_num_accepted_tokens_total"] == accepted
    assert 0 < after["spec_decode_num_drafts_total"] - before["spec_decode_num_drafts_total"] <= drafted
    off = client.post("/completion", json={"prompt": PROMPT, "n_predict": 48, "speculative.type": "none", **GREEDY})
    assert "draft_n" not in off.json()["timings"] and off.json()["content"] == answers[0]["content"]
