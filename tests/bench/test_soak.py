"""`hychat bench soak URL`: two minutes of mixed traffic against a real server on 127.0.0.1 (the CI
size of the 30-minute run in docs/RELIABILITY.md), and what it says when it finds a problem."""

from __future__ import annotations

import json

from tests.bench.test_bench import hychat
from tests.conftest import free_port


def test_two_minutes_of_mixed_traffic_leave_no_error_leak_or_busy_slot(start_server, tmp_path):
    server = start_server({"HYCHAT_PARALLEL": "4", "HYCHAT_QUEUE_SIZE": "8"})
    out = tmp_path / "soak.json"
    result = hychat("bench", "soak", server.url, "--duration", "120", "--clients", "4", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["problems"] == [] and report["errors"] == 0
    # Every kind of traffic was sent: clients that leave mid-stream among them.
    assert set(report["requests"]) == {"chat", "chat_stream", "openai_stream", "completion", "json_schema",
                                       "abandoned_stream"}  # fmt: skip
    assert sum(report["requests"].values()) >= 20
    assert report["rss_growth"] <= 0.05 and (report["busy_slots_end"], report["queued_end"]) == (0, 0)
    assert 0 < report["latency_p50_s"] <= report["latency_p95_s"]
    assert "errors: 0" in result.stdout and "server memory:" in result.stdout


def test_soak_says_when_nothing_answers():
    url = f"http://127.0.0.1:{free_port()}"
    result = hychat("bench", "soak", url, "--duration", "5")
    assert result.returncode == 1
    assert f"Error: {url} failed the warm-up" in result.stderr and "Traceback" not in result.stderr


def test_soak_fails_when_memory_grows_past_its_limit(start_server):
    # A negative limit cannot be met: the report must then fail the run, with the reason.
    server = start_server()
    result = hychat("bench", "soak", server.url, "--duration", "3", "--clients", "1", "--max-rss-growth", "-1")
    assert result.returncode == 1 and "memory grew" in result.stderr
