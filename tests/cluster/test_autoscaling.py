"""Ray Serve's autoscaling, as `--max-replicas` configures it: one replica with 2 slots under 6 long
streams runs more requests than its slots, and Ray adds a second replica, which then answers (the
least loaded takes a request without a prompt: /health)."""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest

SCALE_UP_BOUND_S = 300  # Ray waits upscale_delay_s (30 s) of load first; this bounds a scale-up that never comes


@pytest.fixture(scope="module")
def cluster(start_server):
    return start_server({}, "--ray", "local", "--replicas", "1", "--max-replicas", "2", "--threads", "1",
                        "--parallel", "2")  # fmt: skip


def test_load_beyond_a_replicas_slots_adds_a_replica(cluster):
    first = replica(cluster.url)
    stop = threading.Event()

    def stream(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"请写一篇关于第{i}座山的长文章。"}], "max_tokens": 1800,
                "stream": True, "ignore_eos": True, "speculative.type": "none"}  # fmt: skip
        with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, timeout=600) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    streams = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for t in streams:
        t.start()
    try:
        deadline = time.monotonic() + SCALE_UP_BOUND_S
        seen = {first}
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(2)
            seen.add(replica(cluster.url))  # the least loaded answers: a new replica as soon as it is up
        assert len(seen) == 2, f"no second replica within {SCALE_UP_BOUND_S} s"
    finally:
        stop.set()
        for t in streams:
            t.join(timeout=120)


def replica(url: str) -> str:
    """The replica answering /health (no prompt, so the least loaded)."""
    r = httpx.get(f"{url}/health", timeout=60)
    assert r.status_code == 200, r.text
    return r.headers["x-hychat-replica"]


def test_the_command_ends_with_the_local_cluster_it_started(cluster):
    """SIGTERM to `hychat serve --ray local` stops Ray's processes too, its agents included."""
    started = psutil.Process(cluster.process.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in started)
    cluster.stop()
    _, alive = psutil.wait_procs(started, timeout=30)  # bounds a process left behind, not a speed
    assert not alive, [" ".join(p.cmdline()) for p in alive]
