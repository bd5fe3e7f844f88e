"""The canary: a multi-token decode in a child process, run before the suite and by `hychat doctor`.
Its failure path with children that really die by a signal."""

from __future__ import annotations

import signal
import sys

import pytest

from app import llama_build
from app.bench import canary
from tests.conftest import stop_unless_llama_cpp_decodes


def _dies_by(sig: signal.Signals) -> list[str]:
    """A child that really dies by `sig`, after faulthandler is on (as in the canary's own child)."""
    code = f"import faulthandler, os, signal; faulthandler.enable(); os.kill(os.getpid(), signal.{sig.name})"
    return [sys.executable, "-c", code]


def test_a_healthy_build_decodes_in_the_child(model_path):
    result = canary.run(model_path)
    assert result.ok and result.signal_name is None, result.stderr
    assert canary.verdict(model_path) is None


def test_a_child_killed_by_sigsegv_stops_pytest_with_the_signal_the_build_and_the_cause(model_path):
    with pytest.raises(pytest.exit.Exception) as stopped:
        stop_unless_llama_cpp_decodes(model_path, command=_dies_by(signal.SIGSEGV))
    assert stopped.value.returncode == 3
    message = str(stopped.value.msg)
    assert message.startswith(f"llama.cpp crashed: a child process decoding a multi-token prompt of {model_path} "
                              "died by SIGSEGV (signal 11).")  # fmt: skip
    assert f"llama.cpp build: {llama_build.system_info()}" in message
    assert "\nLikely cause: " in message
    assert "Fatal Python error: Segmentation fault" in message  # the child's own last words


def test_sigill_is_named_as_a_build_for_another_cpu(model_path):
    message = canary.verdict(model_path, command=_dies_by(signal.SIGILL))
    assert "died by SIGILL (signal 4)" in message
    assert f"an instruction this CPU does not have (a wheel built on another machine?). Rebuild it here: " \
           f"{llama_build.rebuild_command()}" in message  # fmt: skip


def test_a_child_that_fails_without_a_signal_shows_its_error(tmp_path):
    missing = str(tmp_path / "missing.gguf")
    message = canary.verdict(missing)
    assert message.startswith(f"a child process decoding a multi-token prompt of {missing} failed (exit status 1)")
    assert f"ModelFileError: {missing}: file not found" in message
