"""Operations: /metrics, /ready, request ids and the request log, through a real server."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.errors import BackendUnavailableError, error_body

CHINESE = [{"role": "user", "content": "请用中文介绍一下长城。"}]
METRIC_NAMES = {
    "hychat_requests": "counter",
    "hychat_prompt_tokens": "counter",
    "hychat_generation_tokens": "counter",
    "hychat_prompt_cached_tokens": "counter",
    "hychat_time_to_first_token_seconds": "histogram",
    "hychat_time_per_output_token_seconds": "histogram",
    "hychat_queue_depth": "gauge",
    "hychat_slots_busy": "gauge",
    "hychat_slots_total": "gauge",
    "hychat_kv_cache_usage_perc": "gauge",
}


@pytest.fixture(scope="module")
def log_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ops") / "server.log"


@pytest.fixture(scope="module")
def server(start_server, log_path):
    return start_server(log_path=log_path)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_exposed_in_prometheus_format(client):
    r = client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, kind in METRIC_NAMES.items():
        assert families[name].type == kind, name
    for name in ("hychat_queue_depth", "hychat_slots_busy", "hychat_slots_total", "hychat_kv_cache_usage_perc"):
        backends = {s.labels["backend"]: s.value for s in families[name].samples}
        assert backends.keys() == {"llamacpp", "pytorch"} and backends["pytorch"] == 0, name  # PyTorch has no slots


def test_the_kv_cache_usage_counts_the_cells_of_running_requests(client, server):
    """The Gateway API Inference Extension's KVCacheUtilization: a running request's cells count, an idle
    slot's kept cells (free for the next request) do not."""
    body = {"messages": CHINESE, "max_tokens": 300, "stream": True, "ignore_eos": True, "temperature": 0,
            "speculative.type": "none"}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        frames = (line for line in r.iter_lines() if '"content":"' in line)
        for _ in range(3):  # decoding: the request holds its slot
            next(frames)
        during = value(scrape(client), "hychat_kv_cache_usage_perc", backend="llamacpp")
        list(frames)  # to its end
    cells = sum(slot["n_ctx"] for slot in client.get("/slots").json())
    assert 20 / cells < during < 1  # at least the prompt's cells, of all slots' cells
    assert any(not slot["is_processing"] and slot["n_cached"] > 300 for slot in client.get("/slots").json())
    assert value(scrape(client), "hychat_kv_cache_usage_perc", backend="llamacpp") == 0


def test_a_chat_request_is_counted(client):
    before = scrape(client)
    r = client.post("/api/chat", json={"messages": CHINESE, "max_new_tokens": 16, "temperature": 0})
    assert r.status_code == 200
    usage = r.json()["usage"]
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("hychat_requests_total", route="/api/chat", status="200") == 1
    assert grew("hychat_prompt_tokens_total", backend="llamacpp") == usage["prompt_tokens"] > 10
    assert grew("hychat_generation_tokens_total", backend="llamacpp") == usage["completion_tokens"] > 0
    assert grew("hychat_time_to_first_token_seconds_count", backend="llamacpp") == 1
    assert grew("hychat_time_to_first_token_seconds_sum", backend="llamacpp") == pytest.approx(
        usage["ttft_ms"] / 1000, abs=0.001
    )
    assert grew("hychat_generation_tokens_total", backend="pytorch") == 0


def test_rejected_requests_are_counted_by_route_and_status(client):
    before = scrape(client)
    assert client.post("/api/chat", json={"messages": CHINESE, "top_p": 2}).status_code == 400
    after = scrape(client)
    grew = value(after, "hychat_requests_total", route="/api/chat", status="400") - value(
        before, "hychat_requests_total", route="/api/chat", status="400"
    )
    assert grew == 1


def test_ready_lists_the_loaded_backend(client):
    assert client.get("/ready").json() == {"status": "ready", "backends": ["llamacpp"]}
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_is_503_without_a_loaded_model():
    """In-process: a started server always has a model, so here the app is given no backend at all."""
    from app.main import create_app

    r = TestClient(create_app(backends={})).get("/ready")  # no `with`: the lifespan (model loading) does not run
    assert r.status_code == 503
    assert r.json() == error_body(BackendUnavailableError("no backend has a model loaded"))


def log_lines(path: Path, request_id: str) -> list[dict]:
    """The server's JSON log lines for one request; the request line is written once the response
    has ended, so it may trail the response by a moment."""
    deadline = time.monotonic() + 300  # bounds a hang, not the moment it is written
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == request_id]
        if any(line["logger"] == "app.requests" for line in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def test_request_id_is_echoed_and_logged(client, log_path):
    given = f"test-{uuid.uuid4().hex[:8]}.1"
    r = client.post("/api/chat", json={"prompt": "你好", "max_new_tokens": 4}, headers={"X-Request-ID": given})
    assert r.status_code == 200 and r.headers["x-request-id"] == given
    [line] = [line for line in log_lines(log_path, given) if line["logger"] == "app.requests"]
    assert line["method"] == "POST" and line["route"] == "/api/chat" and line["status"] == 200
    assert line["duration_ms"] > 0 and line["disconnected"] is False


@pytest.mark.parametrize("given", [None, "", "x" * 65, "bad id", "a/b"])
def test_a_missing_or_insane_request_id_is_replaced(client, log_path, given):
    headers = {} if given is None else {"X-Request-ID": given}
    r = client.get("/nowhere", headers=headers)
    made = r.headers["x-request-id"]
    assert r.status_code == 404 and made != given and len(made) == 32 and int(made, 16) >= 0
    [line] = [line for line in log_lines(log_path, made) if line["logger"] == "app.requests"]
    assert line["route"] == "unmatched" and line["path"] == "/nowhere" and line["status"] == 404


def test_a_stream_the_client_leaves_is_logged_as_disconnected(server, log_path):
    given = uuid.uuid4().hex
    body = {"prompt": "Once upon a time", "max_new_tokens": 500, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.url, timeout=300) as other:
        with other.stream("POST", "/api/chat", json=body, headers={"X-Request-ID": given}) as r:
            assert r.headers["x-request-id"] == given
            next(r.iter_lines())
    [line] = [line for line in log_lines(log_path, given) if line["logger"] == "app.requests"]
    assert line["status"] == 200 and line["disconnected"] is True


def test_metrics_need_the_api_key_when_one_is_set(start_server):
    server = start_server({"HYCHAT_API_KEY": "s3cret"})
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and "hychat_requests_total" in r.text
    assert httpx.get(f"{server.url}/ready").status_code == 200  # probes stay open
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_generation_read_from_a_thread_is_recorded_too(service):
    from app.metrics import REGISTRY
    from app.types import GenerationRequest, SamplingParams

    def count(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"backend": "llamacpp"}) or 0.0

    before = count("hychat_generation_tokens_total"), count("hychat_time_to_first_token_seconds_count")
    events = list(service.start(GenerationRequest(SamplingParams(max_new_tokens=8, temperature=0), prompt="你好")))
    usage = events[-1].usage
    after = count("hychat_generation_tokens_total"), count("hychat_time_to_first_token_seconds_count")
    assert (after[0] - before[0], after[1] - before[1]) == (usage.completion_tokens, 1)
