"""`hychat serve` start-up mistakes cost one line, found before anything slow; a crash in native code
leaves a traceback in the server's log instead of a silent exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

HANG_S = 300  # bounds a start-up that hangs; a mistake exits long before


def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip


def _damaged(kind: str, model_path: str, tmp_path: Path) -> Path:
    data = Path(model_path).read_bytes()
    path = tmp_path / f"{kind}.gguf"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not-gguf":
        path.write_text("<html>404 Not Found</html>")  # what a failed download saves
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("missing", "file not found"),
        ("truncated", "truncated: expected at least"),
        ("not-gguf", "not a GGUF file (bad magic b'<htm', expected b'GGUF')"),
    ],
)
def test_a_bad_model_file_is_one_line_naming_it(kind, problem, model_path, tmp_path):
    path = _damaged(kind, model_path, tmp_path)
    result = serve("--model", str(path), "--port", str(free_port()))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: {problem}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_the_traceback_stays_at_debug_level(tmp_path):
    path = tmp_path / "missing.gguf"
    result = serve("--model", str(path), "--port", str(free_port()), HYCHAT_LOG_LEVEL="debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr  # in the debug log line's `exception`
    assert result.stderr.strip().splitlines()[-1] == f"Error: {path}: file not found"


def test_a_taken_port_is_found_before_any_model_loads(model_path, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # With a model that would load: the start-up log never gets to "llama.cpp loaded".
        loadable = serve("--model", model_path, "--port", str(port), HYCHAT_LOG_LEVEL="debug")
        # With a model that would fail: the port's error is the one reported, so it was checked first.
        missing = serve("--model", str(tmp_path / "missing.gguf"), "--port", str(port))
    for result in (loadable, missing):
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "llama.cpp loaded" not in loadable.stderr and "missing.gguf" not in missing.stderr
    assert "Traceback" not in loadable.stderr + missing.stderr


def test_an_address_that_is_not_this_machines_is_one_line():
    port = free_port()
    result = serve("--host", "192.0.2.1", "--port", str(port))  # TEST-NET-1: never a local address
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: cannot listen on 192.0.2.1:{port}: Cannot assign requested address"]


def test_a_fatal_signal_leaves_a_python_traceback_in_the_log(start_server, tmp_path):
    # A real SIGSEGV, delivered from outside: faulthandler reports it exactly as it reports a crash in
    # llama.cpp's own code (which no test can cause at will on a healthy build).
    log = tmp_path / "server.log"
    server = start_server({}, log_path=log)
    os.kill(server.process.pid, signal.SIGSEGV)
    assert server.process.wait(timeout=HANG_S) == -signal.SIGSEGV
    text = log.read_text()  # whole: the process that wrote it is gone
    assert "Fatal Python error: Segmentation fault" in text
    assert "most recent call first" in text and 'File "' in text
