"""Runs llama.cpp's server test suite against hychat or native llama-server, both on the embedded model.

The suite runs in its own pytest process, from a scratch copy of the cached upstream files (it writes
into its folder), with ./llama-server (shim.py) as LLAMA_SERVER_BIN_PATH and plugin.py loaded.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.llama_server_suite import shim, upstream

HERE = Path(__file__).resolve().parent
NATIVE_RESULTS = HERE / "native_results.json"
OUTCOMES = ("passed", "failed", "error", "skipped")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(target: str, k: str | None = None, nodeids: list[str] | None = None, pytest_args: list[str] = ()) -> dict:
    """Each test's outcome (and message when not passed), with what was deselected and why."""
    root = upstream.suite_root()
    model = shim.model_path()
    env = dict(
        os.environ,
        LLAMA_SERVER_BIN_PATH=str(HERE / "llama-server"),
        HYCHAT_SUITE_TARGET=target,
        HYCHAT_SUITE_MODEL=model,
        HF_HUB_OFFLINE="1",
        PORT=str(free_port()),  # the suite's servers, one at a time
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",  # no xdist, nor this venv's other plugins
        PYTHONPATH=os.pathsep.join(filter(None, [str(shim.REPO), os.environ.get("PYTHONPATH")])),
    )
    if target == "hychat":
        env["HYCHAT_SUITE_HYCHAT_FLAGS"] = " ".join(sorted(shim.hychat_flags()))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-server-suite-") as scratch:
        shutil.copytree(root, scratch, dirs_exist_ok=True)
        tests = Path(scratch) / upstream.TESTS
        env["HYCHAT_SUITE_REPORT"] = report = str(Path(scratch) / "report.json")
        command = [sys.executable, "-m", "pytest", "-q", "--tb=line", "--durations=15"]
        command += ["-p", "tests.llama_server_suite.plugin", "-p", "no:cacheprovider"]
        command += ["--rootdir", str(tests), "-c", str(tests / "pytest.ini")]
        command += [*(["-k", k] if k else []), *pytest_args, *(nodeids or ["unit"])]
        code = subprocess.run(command, cwd=tests, env=env).returncode
        if not Path(report).is_file():
            raise RuntimeError(f"the suite's pytest ended ({code}) with no report: see its output above")
        results = json.loads(Path(report).read_text())
    outcomes = dict(sorted(results["tests"].items()))
    return {
        "target": target,
        "llama_cpp_python": upstream.version(),
        "model": Path(model).name,
        "date": datetime.date.today().isoformat(),
        "duration_s": round(time.monotonic() - started),
        "summary": {o: sum(1 for r in outcomes.values() if r["outcome"] == o) for o in OUTCOMES}
        | {"deselected": len(results["deselected"])},
        "tests": outcomes,
        "deselected": dict(sorted(results["deselected"].items())),
    }


# Tests that pass on llama-server where hychat answers otherwise on purpose -> why.
DIFFERENCES = {
    "unit/test_compat_anthropic.py::test_anthropic_tool_result_with_image": "an image for a text-only model is a "
    "400 (with llama-server's words, image input is not supported), not a 500, which SDKs retry in vain",
    "unit/test_compat_anthropic.py::test_anthropic_vision_format_accepted": "the same",
    "unit/test_compat_oai_responses.py::test_responses_stream_with_llama_telemetry": "an answer cut by "
    "max_output_tokens ends with OpenAI's response.incomplete, not response.completed",
    "unit/test_security.py::test_cors_options[web.mydomain.fr-Access-Control-Allow-Headers-*]": "a preflight "
    "names the headers asked for: browsers do not let a * cover Authorization",
}


def regressions(results: dict, native: dict) -> dict[str, str]:
    """The tests that pass natively but not here (other than DIFFERENCES) -> what happened here."""
    out = {}
    for nodeid, reference in native["tests"].items():
        if nodeid in DIFFERENCES:
            continue
        here = results["tests"].get(nodeid)
        if reference["outcome"] == "passed" and (here or {}).get("outcome") != "passed":
            out[nodeid] = f"{here['outcome']}: {here.get('message', '')}" if here else "not run"
    return out


def summary(results: dict) -> str:
    lines = [f"{results['target']}: " + ", ".join(f"{n} {o}" for o, n in results["summary"].items())]
    lines.append(f"  in {results['duration_s']} s, {results['model']}, llama-cpp-python {results['llama_cpp_python']}")
    if results["target"] != "native" and NATIVE_RESULTS.is_file():
        native = json.loads(NATIVE_RESULTS.read_text())
        ran = {n: r for n, r in native["tests"].items() if n in results["tests"]}
        missing = regressions(results, {"tests": ran})
        passed = sum(1 for r in ran.values() if r["outcome"] == "passed")
        differ = [n for n in DIFFERENCES if n in ran and results["tests"][n]["outcome"] != "passed"]
        lines.append(
            f"  {passed - len(missing) - len(differ)} of the {passed} tests run that pass natively pass here; "
            f"{len(differ)} differ on purpose (runner.DIFFERENCES)"
        )
        if missing:
            lines.append("  pass natively, not here:")
            lines += [f"    {n}\n      {m.splitlines()[0][:300] if m else ''}" for n, m in missing.items()]
    return "\n".join(lines)
