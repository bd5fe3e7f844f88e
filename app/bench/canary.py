"""A multi-token decode in a child process: a crash in llama.cpp's native code (a signal no Python
code can catch) becomes a message instead of taking the caller down with it. The test suite runs it
before any test touches llama.cpp; `hychat doctor` before its own in-process probe.

    python -m app.bench.canary MODEL [THREADS]

The child loads MODEL through the product's backend (so the AMX guard applies, as in the service)
and decodes a prompt of about 30 tokens: the batch of more than one token that a broken build dies on.
"""

from __future__ import annotations

import faulthandler
import signal
import subprocess
import sys
from dataclasses import dataclass

from app import llama_build

PROMPT = "从前有一座山，山里有一座庙，庙里有个老和尚在给小和尚讲故事。Once upon a time there was a mountain."
TIMEOUT_S = 600  # bounds a hang, not a speed: the child loads a model and decodes a few tokens
OUTPUT_LINES = 12  # of the child's stderr, in a failure message: faulthandler's traceback


@dataclass(frozen=True)
class CanaryResult:
    command: list[str]
    returncode: int
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def signal_name(self) -> str | None:
        """The signal the child died by (SIGSEGV, SIGILL...), None when it exited."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def run(model_path: str, threads: int | None = None, command: list[str] | None = None) -> CanaryResult:
    """`command` replaces the child (the tests give one that dies by a real signal)."""
    command = command or [sys.executable, "-m", __spec__.name, model_path, *([str(threads)] if threads else [])]
    try:
        child = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        return CanaryResult(command, 124, f"no answer within {TIMEOUT_S} s\n{error.stderr or ''}")
    return CanaryResult(command, child.returncode, child.stderr)


def explain(result: CanaryResult, model_path: str) -> str:
    """What went wrong, the build, the likely cause and the fix, for a failed canary."""
    if result.signal_name:
        what = f"llama.cpp crashed: a child process decoding a multi-token prompt of {model_path} died by "
        what += f"{result.signal_name} (signal {-result.returncode})"
    else:
        what = f"a child process decoding a multi-token prompt of {model_path} failed (exit status {result.returncode})"
    info = llama_build.system_info()
    tail = "\n".join(result.stderr.strip().splitlines()[-OUTPUT_LINES:])
    return (
        f"{what}.\nllama.cpp build: {info}\nLikely cause: {likely_cause(result)}\n"
        f"The child ({' '.join(result.command)}) wrote:\n{tail}"
    )


def likely_cause(result: CanaryResult) -> str:
    check = llama_build.check_this_machine(_allow_amx())
    if result.signal_name and check.active:
        how = "HYCHAT_LLAMACPP_ALLOW_AMX lets weights use them" if check.allowed else "despite the guard"
        return (
            f"llama.cpp's AMX kernels, which this build has and this CPU runs ({how}; {llama_build.AMX_ISSUE}). "
            f"Rebuild without them: {llama_build.rebuild_command()}"
        )
    if result.signal_name == "SIGILL":
        return (
            "the build uses an instruction this CPU does not have (a wheel built on another machine?). "
            f"Rebuild it here: {llama_build.rebuild_command()}"
        )
    if result.signal_name:
        return "none hychat knows: run `hychat doctor`, and report the crash with this message"
    return "the child's own error, below"


def verdict(model_path: str, threads: int | None = None, command: list[str] | None = None) -> str | None:
    """None when a multi-token decode works in a child, else the message that explains it."""
    result = run(model_path, threads, command)
    return None if result.ok else explain(result, model_path)


def main(argv: list[str]) -> int:
    from app.services.llamacpp_service import LlamaCppBackend
    from app.types import GenerationRequest, SamplingParams

    faulthandler.enable()  # a crash leaves the Python side of its stack for the parent's message
    model_path, threads = argv[0], int(argv[1]) if len(argv) > 1 else None
    backend = LlamaCppBackend()
    backend.load_model(model_path, n_ctx=256, n_threads=threads, parallel=1, allow_amx=_allow_amx())
    request = GenerationRequest(SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True), prompt=PROMPT)
    tokens = [event.token_id for event in backend.start(request) if event.token_id is not None]
    print(f"decoded a {len(backend.tokenize(PROMPT))}-token prompt, then {len(tokens)} tokens")
    backend.unload()
    return 0 if tokens else 1


def _allow_amx() -> bool:
    """The service's setting: the canary decodes as the service would."""
    from config.settings import Settings

    return Settings().llamacpp_allow_amx


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
