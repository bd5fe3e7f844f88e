"""hychat passes every test of llama.cpp's server suite that native llama-server passes on the same model
(native_results.json: `python -m tests.llama_server_suite run --target native --json ...`), but for the
few where it answers otherwise on purpose (runner.DIFFERENCES, each with its reason)."""

from __future__ import annotations

import json
import os

import pytest

from tests.llama_server_suite import runner

pytestmark = pytest.mark.skipif(
    os.environ.get("HYCHAT_LLAMA_SERVER_SUITE") != "1",
    reason="llama.cpp's server suite: HYCHAT_LLAMA_SERVER_SUITE=1 runs it (make llama-server-tests)",
)


def test_hychat_passes_what_llama_server_passes() -> None:
    native = json.loads(runner.NATIVE_RESULTS.read_text())
    passed = [nodeid for nodeid, result in native["tests"].items() if result["outcome"] == "passed"]
    results = runner.run("hychat", nodeids=passed)
    missing = runner.regressions(results, native)
    assert not missing, f"{len(missing)} of the {len(passed)} tests native llama-server passes fail on hychat:\n" + (
        "\n".join(f"{nodeid}: {what}" for nodeid, what in missing.items())
    )
