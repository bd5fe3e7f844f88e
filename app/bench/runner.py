"""Runs every configuration in its own process and gathers what each measured (`hychat bench`)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from app.bench.configs import BenchConfig, model_bytes
from app.bench.measure import Job

# Figures summarised per configuration: (prompt kind, field of a run).
FIGURES = {
    "decode_tokens_per_s": ("short", "decode_tokens_per_s"),
    "ttft_ms": ("short", "ttft_ms"),
    "long_ttft_ms": ("long", "ttft_ms"),
    "prompt_tokens_per_s": ("long", "prompt_tokens_per_s"),
    # With --llama-bench: its figure measured right after each of our runs, and ours over it, per pair.
    "native_decode_tokens_per_s": ("short", "native_tokens_per_s"),
    "native_decode_ratio": ("short", "native_ratio"),
    "native_prompt_tokens_per_s": ("long", "native_tokens_per_s"),
    "native_prompt_ratio": ("long", "native_ratio"),
}


@dataclass(frozen=True)
class BenchOptions:
    threads: int
    tokens: int = 128
    prompt_tokens: int = 512
    reps: int = 3
    n_ctx: int = 2048
    timeout_s: float = 1800
    llama_bench: str | None = None  # llama.cpp's own llama-bench binary, for ratios to native


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        return cls(statistics.median(values), min(values), max(values)) if values else None


@dataclass
class ConfigResult:
    config: BenchConfig
    model_bytes: int
    ok: bool = False
    error: str | None = None
    load_s: float | None = None
    peak_rss_mb: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Spread | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # quality

    def figure(self, name: str) -> float | None:
        spread = self.summary.get(name)
        return spread.median if spread else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_config(options: BenchOptions) -> int:
    """Progress steps of one configuration: its load, then every generation."""
    return 1 + (options.reps + 1) * (2 if options.prompt_tokens else 1)


def run_config(config: BenchConfig, options: BenchOptions, on_run: Callable[[str], None]) -> ConfigResult:
    result = ConfigResult(config, model_bytes(config.model))
    job = Job(config.backend, config.model, config.weights, options.threads, options.tokens,
              options.prompt_tokens, options.reps, options.n_ctx, spawned_at=time.time(),
              llama_bench=options.llama_bench)  # fmt: skip
    command = [sys.executable, "-m", "app.bench.measure", json.dumps(asdict(job))]
    timed_out = threading.Event()
    # stderr to a file, not a pipe: a chatty child must never block on a pipe nobody reads.
    with (
        tempfile.TemporaryFile("w+") as stderr,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as child,
    ):
        timer = threading.Timer(options.timeout_s, lambda: (timed_out.set(), child.kill()))
        timer.start()
        try:
            for line in child.stdout:
                if line.startswith('{"event"'):  # anything else a library printed is not ours
                    _take(result, json.loads(line), on_run, config.name)
            child.wait()
        finally:
            timer.cancel()
        stderr.seek(0)
        if timed_out.is_set():
            result.error = f"gave no result within {options.timeout_s:g} s"
        elif child.returncode != 0 and result.error is None:
            result.error = _exit_reason(child.returncode, stderr.read())
    result.ok = result.error is None
    result.summary = _summarise(result.runs)
    return result


def _take(result: ConfigResult, event: dict[str, Any], on_run: Callable[[str], None], name: str) -> None:
    kind = event.pop("event")
    if kind == "loaded":
        result.load_s = event["load_s"]
        on_run(name)
    elif kind == "run":
        result.runs.append(event)
        on_run(name)
    elif kind == "done":
        result.peak_rss_mb = event["peak_rss_mb"]
    elif kind == "error":
        result.error = event["message"]


def _exit_reason(code: int, stderr: str) -> str:
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return f"the measuring process ended ({how}){': ' + last if last else ''}"


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Spread | None]:
    measured = [r for r in runs if not r["warmup"]]
    return {
        name: Spread.of([r[key] for r in measured if r["prompt"] == prompt and key in r])
        for name, (prompt, key) in FIGURES.items()
    }
