"""Native llama.cpp's own `llama-bench` on the same GGUF and threads: the distance to it.

The measuring process runs it right after each of its own runs, so every figure of ours has a
native one taken moments later: this machine's speed drifts by 10% within a minute.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path


def native_tokens_per_s(
    binary: str | Path, gguf: str | Path, threads: int, kind: str, prompt_tokens: int, tokens: int
) -> float:
    """`kind` "long": prompt processing of `prompt_tokens` from an empty context. "short": decoding
    `tokens` after `prompt_tokens` of context, as our short-prompt decode runs. Flash attention on, as ours."""
    args = ["-m", str(gguf), "-t", str(threads), "-r", "1", "-fa", "1", "-o", "json"]
    if kind == "long":
        args += ["-p", str(prompt_tokens), "-n", "0"]
    else:
        args += ["-p", "0", "-n", str(tokens), "-d", str(prompt_tokens)]
    try:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600)
    except OSError as error:
        raise RuntimeError(f"cannot run {binary}: {error.strerror}") from None
    if done.returncode < 0:  # killed by a signal: its last line of log says nothing of why
        raise RuntimeError(f"llama-bench failed: {_killed_by(-done.returncode)}")
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise RuntimeError(f"llama-bench failed: {tail[0]}")
    return float(json.loads(done.stdout)[0]["avg_ts"])


def _killed_by(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGILL:  # seen on an AMX Xeon: a native build dies at its first multi-token batch
        return (
            f"killed by {name}, an instruction this CPU cannot run: a build for another CPU, or llama.cpp's "
            "AMX kernels (build it without them: docs/operations.md#every-cpu)"
        )
    return f"killed by {name}"
