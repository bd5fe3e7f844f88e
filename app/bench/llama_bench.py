"""Native llama.cpp's own `llama-bench` on the same GGUF and threads: the distance to it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def llama_bench(
    binary: str | Path, gguf: str | Path, threads: int, prompt_tokens: int, tokens: int, depth: int, reps: int
) -> dict[str, float]:
    """Prompt tokens/s (pp`prompt_tokens` from an empty context) and decode tokens/s (tg`tokens`
    after `depth` tokens of context, as our short-prompt decode runs), flash attention on as ours."""
    common = ["-m", str(gguf), "-t", str(threads), "-r", str(reps), "-fa", "1", "-o", "json"]
    figures = {}
    if prompt_tokens:
        figures["prompt_tokens_per_s"] = _avg_ts(binary, [*common, "-p", str(prompt_tokens), "-n", "0"])
    figures["decode_tokens_per_s"] = _avg_ts(binary, [*common, "-p", "0", "-n", str(tokens), "-d", str(depth)])
    return figures


def _avg_ts(binary: str | Path, args: list[str]) -> float:
    try:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=1800)
    except OSError as error:
        raise RuntimeError(f"cannot run {binary}: {error.strerror}") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise RuntimeError(f"llama-bench failed: {tail[0]}")
    tests = json.loads(done.stdout)
    return float(tests[0]["avg_ts"])
