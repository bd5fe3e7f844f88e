"""`hychat bench serve URL`: the load generator against a real server on 127.0.0.1."""

from __future__ import annotations

from tests.bench.test_bench import hychat
from tests.conftest import free_port


def test_bench_serve_reports_every_level(start_server):
    server = start_server({"HYCHAT_PARALLEL": "2"})
    result = hychat("bench", "serve", server.url, "--levels", "1,3", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    header, _, *rows = result.stdout.strip().splitlines()
    assert header == "| streams | tokens/s | TTFT p50 (s) | TTFT p95 (s) | cut short | errors |"
    assert [row.split("|")[1].strip() for row in rows] == ["1", "3"]
    for row in rows:
        _, streams, tokens_per_s, p50, p95, cut_short, errors, _ = (c.strip() for c in row.split("|"))
        assert float(tokens_per_s) > 0 and 0 < float(p50) <= float(p95)
        assert (cut_short, errors) == ("0", "0")


def test_bench_serve_says_when_nothing_answers():
    url = f"http://127.0.0.1:{free_port()}"
    result = hychat("bench", "serve", url, "--levels", "1")
    assert result.returncode == 1
    assert f"Error: {url} did not answer a chat completion" in result.stderr
    assert "Traceback" not in result.stderr
