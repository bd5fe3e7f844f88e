"""pytest plugin (`-p tests.llama_server_suite.plugin`) that runs llama.cpp's server test suite offline,
on the one embedded model: no model downloads, the tests that need another kind of model or a
llama-server feature out of hychat's scope deselected (with the reason), slow tests deselected unless
SLOW_TESTS=1, a time limit per test, and each test's outcome written as JSON to HYCHAT_SUITE_REPORT.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

# unit/<file> -> why none of its tests is run.
OUT_OF_SCOPE_FILES = {
    "test_embedding.py": "embeddings: needs an embedding model (bert-bge-small)",
    "test_rerank.py": "rerank: needs a reranker model (jina-reranker)",
    "test_vision_api.py": "vision: needs a multimodal model and its mmproj (tinygemma3)",
    "test_router.py": "router mode: llama-server started without a model, loading several on demand",
    "test_stream.py": "router mode: stream resume across model loads",
    "test_mcp_servers.py": "MCP servers (--mcp-servers-config), in router mode",
    "test_tools_builtin.py": "built-in server tools (--tools)",
    "test_proxy.py": "the web UI's MCP CORS proxy (--ui-mcp-proxy)",
    "test_sleep.py": "sleep on idle (--sleep-idle-seconds) unloads and reloads the model",
    "test_slot_save.py": "slot save/restore to files (--slot-save-path), partly with a multimodal model",
    "test_speculative.py": "speculative decoding: needs a draft model",
    "test_lora.py": "LoRA: needs a GGUF LoRA adapter for stories15M-MoE",
    "test_kv_keep_only_active.py": "asserts llama-server's own debug log lines (__TEST_TAG_*) of its RAM prompt cache",
}
# unit/<file>::<test> (a parametrized test: all its cases) -> why.
OUT_OF_SCOPE_TESTS = {
    "test_basic.py::test_load_split_model": "loads a GGUF split in 3 files (downloaded)",
    "test_compat_anthropic.py::test_anthropic_vision_base64_with_multimodal_model": "vision: needs tinygemma3",
    "test_metrics.py::test_metrics_embedding_prompt_is_counted": "embeddings: needs an embedding model",
    "test_security.py::test_cors_origins_defaults_to_localhost_with_tools_enabled": "built-in server tools (--tools)",
    "test_security.py::test_cors_proxy_only_forwards_explicit_proxy_headers": "the web UI's MCP CORS proxy",
    "test_security.py::test_local_media_file": "vision: local image files (--media-path) need tinygemma3",
}
TEST_TIMEOUT_S = int(os.environ.get("HYCHAT_SUITE_TEST_TIMEOUT", "300"))

outcomes: dict[str, dict] = {}
deselected: dict[str, str] = {}


def out_of_scope(item: pytest.Item) -> str | None:
    name = Path(str(item.path)).name
    if name in OUT_OF_SCOPE_FILES:
        return OUT_OF_SCOPE_FILES[name]
    reason = OUT_OF_SCOPE_TESTS.get(f"{name}::{item.originalname}")
    if reason:
        return reason
    if item.get_closest_marker("slow") and os.environ.get("SLOW_TESTS") not in ("1", "ON"):
        return "slow: downloads a big model (SLOW_TESTS=1 runs it)"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    # conftest.py has imported utils: its session fixture would download every preset's model.
    sys.modules["utils"].ServerPreset.load_all = staticmethod(lambda: None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        reason = out_of_scope(item)
        if reason:
            deselected[item.nodeid] = reason
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class TestTimeout(Exception):
    """Not TimeoutError: the HTTP clients would take that for their own read timeout."""


def _timed_out(signum, frame):
    # Killing the servers first unblocks any request still waiting on them, in any thread.
    for server in list(sys.modules["utils"].server_instances):
        if server.process:
            server.process.kill()
    raise TestTimeout(f"the test ran over {TEST_TIMEOUT_S} s (HYCHAT_SUITE_TEST_TIMEOUT)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        return (yield)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _details(report: pytest.TestReport) -> dict:
    """The error's message, and where it was raised (unit/test_x.py:LINE, utils.py:LINE)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return {"message": report.longrepr[2]}
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None:
        return {"message": str(report.longrepr).strip()[-600:]}
    path = Path(crash.path)
    at = f"{path.parent.name}/{path.name}" if path.parent.name == "unit" else path.name
    message = re.sub(r" at 0x[0-9a-f]+>", ">", crash.message.strip())  # the same text from run to run
    if len(message) > 800:  # the start says what was asserted, the end often what came instead
        message = f"{message[:400]} [...] {message[-400:]}"
    return {"message": message, "at": f"{at}:{crash.lineno}"}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """One outcome per test: its first setup error, failure or skip; `passed` only if all phases passed."""
    if report.nodeid in outcomes and outcomes[report.nodeid]["outcome"] != "passed":
        return
    if report.passed:
        if report.when == "call":
            outcomes[report.nodeid] = {"outcome": "passed"}
        return
    outcome = ("failed" if report.when == "call" else "error") if report.failed else "skipped"
    outcomes[report.nodeid] = {"outcome": outcome, **_details(report)}


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("HYCHAT_SUITE_REPORT")
    if path:
        Path(path).write_text(json.dumps({"tests": outcomes, "deselected": deselected}, indent=1))
