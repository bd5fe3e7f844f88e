"""The benchmark's results as a Markdown table, a JSON file, and the machine they were measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from app.bench.runner import BenchOptions, ConfigResult, Spread
from app.cpu import physical_cores


def machine(threads: int) -> dict[str, Any]:
    import llama_cpp

    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads_used": threads,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("llama-cpp-python", "torch", "transformers")},
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


def reference_of(results: list[ConfigResult]) -> ConfigResult | None:
    """What speed-ups and savings are relative to: PyTorch bfloat16 (the user's guide), else any PyTorch."""
    torch_ok = [r for r in results if r.ok and r.config.backend == "pytorch"]
    return next((r for r in torch_ok if r.config.weights == "bfloat16"), torch_ok[0] if torch_ok else None)


def markdown(results: list[ConfigResult], options: BenchOptions, host: dict[str, Any]) -> str:
    ref = reference_of(results)
    quality = any("quality" in r.extra for r in results)
    long_ttft = f"first token, ~{options.prompt_tokens}-token prompt (ms)"
    head = ["configuration", "file (MiB)", "load (s)", "first token (ms)", long_ttft, "prompt tokens/s",
            "decode tokens/s", "peak memory (MiB)"]  # fmt: skip
    if ref:
        head += [f"decode vs {ref.config.name}", f"memory saved vs {ref.config.name}"]
    if quality:
        head += ["perplexity", "KL", "top-1"]
    lines = [_row(head), _row(["---"] * len(head))]
    for r in results:
        lines.append(_row(_cells(r, ref, quality, len(head))))
    lines += ["", _setup_line(options, host)]
    lines += _llama_bench_table(results)
    return "\n".join(lines) + "\n"


def _cells(r: ConfigResult, ref: ConfigResult | None, quality: bool, width: int) -> list[str]:
    if not r.ok:
        return [r.config.name, _mib(r.model_bytes), f"failed: {r.error}"] + [""] * (width - 3)
    s = r.summary
    cells = [r.config.name, _mib(r.model_bytes), _num(r.load_s, 1), _spread(s.get("ttft_ms"), 0),
             _spread(s.get("long_ttft_ms"), 0), _spread(s.get("prompt_tokens_per_s"), 1),
             _spread(s.get("decode_tokens_per_s"), 1), _num(r.peak_rss_mb, 0)]  # fmt: skip
    if ref:
        speedup = r.figure("decode_tokens_per_s") / ref.figure("decode_tokens_per_s")
        cells += [f"{speedup:.2f}×", f"{1 - r.peak_rss_mb / ref.peak_rss_mb:.0%}"]
    if quality:
        q = r.extra.get("quality")
        if isinstance(q, dict) and "perplexity" in q:
            cells += [f"{q['perplexity']:.2f}", f"{q['mean_kl']:.4f}", f"{q['top1_agreement']:.1%}"]
        else:
            cells += [q if isinstance(q, str) else "", "", ""]
    return cells


def _llama_bench_table(results: list[ConfigResult]) -> list[str]:
    rows = [r for r in results if r.ok and any(run.keys() & {"native_ratio", "native_error"} for run in r.runs)]
    if not rows:
        return []
    head = ["configuration", "llama-bench prompt tokens/s", "ours", "ratio", "llama-bench decode tokens/s", "ours",
            "ratio"]  # fmt: skip
    lines = ["", "Against native llama.cpp: `llama-bench` on the same GGUF, threads and flash attention, run right "
             "after each of our runs; the ratio is the median over those pairs.", "", _row(head),
             _row(["---"] * len(head))]  # fmt: skip
    for r in rows:
        error = next((run["native_error"] for run in r.runs if "native_error" in run), None)
        if error:
            lines.append(_row([r.config.name, error, "", "", "", "", ""]))
            continue
        figures = [
            ("native_prompt_tokens_per_s", 1),
            ("prompt_tokens_per_s", 1),
            ("native_prompt_ratio", 2),
            ("native_decode_tokens_per_s", 1),
            ("decode_tokens_per_s", 1),
            ("native_decode_ratio", 2),
        ]
        lines.append(_row([r.config.name] + [_num(r.figure(name), digits) for name, digits in figures]))
    return lines


def _setup_line(options: BenchOptions, host: dict[str, Any]) -> str:
    return (
        f"{host['cpu']}, {host['physical_cores']} physical cores, {options.threads} threads; "
        f"{options.tokens} tokens generated per run, median of {options.reps} runs after a warm-up (± half "
        f"the range); first token: a short chat prompt; prompt tokens/s: the ~{options.prompt_tokens}-token "
        f"prompt; decode: after the short prompt; llama.cpp with {options.n_ctx} tokens of context, one slot."
    )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _spread(s: Spread | None, digits: int) -> str:
    if s is None:
        return ""
    half = (s.high - s.low) / 2
    return f"{s.median:.{digits}f} ± {half:.{digits}f}"


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
