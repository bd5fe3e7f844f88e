"""`hychat doctor`: why is it not faster? The guide's "speed did not improve" checklist, run on this
machine: the llama.cpp build and the CPU features it uses, its AMX kernels, threads against physical
cores, the model's quantization and size against free memory, CPU load from other processes, whether
the GGUF is whole, a multi-token decode in a child process (a build that crashes shows as a finding,
not as doctor dying) and a short decode probe that says where the weights went (AMX, CPU_REPACK, CPU).
Each finding carries one concrete advice line.

Runs on the core install: llama.cpp through the product's backend, never torch.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app import llama_build
from app.bench import canary
from app.cpu import physical_cores
from app.modelfiles.gguf import UNQUANTIZED, GGUFHeader
from app.modelfiles.library import kv_bytes_per_token
from app.modelfiles.presets import cache_type_keywords
from app.pipeline.inspect import GGUFReport, inspect_gguf
from app.services.llamacpp_service import LLAMACPP_AVAILABLE, LlamaCppBackend
from app.types import GenerationRequest, SamplingParams

QUANTIZE_ADVICE = "hychat quantize MODEL out.q4_k_m.gguf --type q4_k_m: 2-4x faster decode on CPU"
# /proc/cpuinfo flag -> llama_print_system_info() name, for the x86 features whose absence in the
# build costs the most decode speed.
X86_FEATURES = {"avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx512f": "AVX512"}
BUSY_PERCENT = 25.0  # other processes' share of all CPUs above which decode visibly slows
MEMORY_HEADROOM = 0.8  # above this share of available memory, the KV cache and the OS have little room
PROBE_N_CTX = 512
PROBE_PROMPT = "The history of the printing press begins"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    advice: str | None = None


@dataclass(frozen=True)
class KvCache:
    """The KV cache the server would give the model: `parallel` slots of `n_ctx` tokens, in these types."""

    n_ctx: int = 2048
    parallel: int = 4
    type_k: str = "f16"
    type_v: str = "f16"


def diagnose(
    model_path: str,
    threads: int,
    probe_s: float = 5.0,
    n_gpu_layers: int = 0,
    allow_amx: bool = False,
    kv: KvCache = KvCache(),
) -> list[Finding]:
    """Every check in the guide's order; a check that breaks becomes a "fail" finding."""
    findings = [
        *_run("build", check_build, n_gpu_layers, allow_amx),
        *_run("threads", check_threads, threads),
        *_run("model", check_model_file, model_path, kv),
        *_run("cpu load", check_cpu_load),  # before the probe: it must sample other processes, not ours
    ]
    if any(f.check == "model" and f.status == "fail" for f in findings):
        skipped = "the model file failed its check"
    else:
        # In a child first: a build that dies on a multi-token batch must not take doctor down with it.
        findings += _run("decode", check_decode, model_path, threads)
        skipped = "the decode check failed" if findings[-1].status == "fail" else None
    if skipped or probe_s <= 0:
        findings.append(Finding("probe", "warn", f"skipped: {skipped or '--probe-seconds is 0'}"))
    else:
        findings += _run("probe", run_probe, model_path, threads, probe_s, n_gpu_layers, allow_amx)
    return findings


def _run(check: str, function: Callable[..., Finding | list[Finding]], *args: Any) -> list[Finding]:
    try:
        result = function(*args)
    except Exception as error:  # a broken check must not hide the other findings: it is one of them
        return [Finding(check, "fail", f"the check itself failed: {type(error).__name__}: {error}")]
    return result if isinstance(result, list) else [result]


# -- (a) the llama.cpp build ------------------------------------------------------------------------


def check_build(n_gpu_layers: int = 0, allow_amx: bool = False) -> list[Finding]:
    if not LLAMACPP_AVAILABLE:
        return [Finding("build", "fail", "llama-cpp-python is not installed or its library does not load",
                        "install the project again: pip install -e . (it pins llama-cpp-python)")]  # fmt: skip
    import llama_cpp

    info = llama_build.system_info()
    flags = llama_build.cpu_flags()
    findings = [
        _features_finding(llama_cpp.__version__, llama_build.build_features(info), flags, platform.machine()),
        amx_finding(llama_build.check_amx(info, flags, allow_amx)),
    ]
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    if n_gpu_layers != 0 and not gpu:
        findings.append(Finding("gpu", "warn", f"n_gpu_layers={n_gpu_layers} but this build has no GPU offload: "
                                "every layer runs on the CPU",
                                "rebuild with a GPU backend, e.g. CMAKE_ARGS=\"-DGGML_CUDA=on\", or set "
                                "HYCHAT_LLAMACPP_N_GPU_LAYERS=0"))  # fmt: skip
    else:
        findings.append(Finding("gpu", "ok", f"offload {'supported' if gpu else 'not in this build'}, "
                                f"{n_gpu_layers} layers asked"))  # fmt: skip
    return findings


def _features_finding(version: str, features: set[str], flags: set[str], machine: str) -> Finding:
    detail = f"llama-cpp-python {version}, CPU features: {' '.join(sorted(features)) or 'none reported'}"
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686")
    missing = [name for flag, name in X86_FEATURES.items() if x86 and flag in flags and name not in features]
    if missing:
        # The CPU has them but the build does not use them: a generic (non-native) build.
        return Finding("build", "warn", f"{detail}; the CPU has {' '.join(missing)} but this build does not use it",
                       f"rebuild for this CPU: {llama_build.rebuild_command()}")  # fmt: skip
    return Finding("build", "ok", detail)


def amx_finding(check: llama_build.AmxCheck) -> Finding:
    """An AMX build on an AMX CPU is the crash of llama.cpp#20824: kept off by the guard (warn), or
    let on by HYCHAT_LLAMACPP_ALLOW_AMX (fail)."""
    if not check.active:
        return Finding("amx", "ok", check.summary())
    detail = check.summary().partition(" Rebuild without them:")[0]
    advice = f"rebuild without them: {llama_build.rebuild_command()}"
    return Finding("amx", "warn" if check.blocked else "fail", detail, advice)


def check_decode(model_path: str, threads: int) -> Finding:
    result = canary.run(model_path, threads)
    if not result.ok:
        return Finding("decode", "fail", canary.explain(result, model_path).replace("\n", " | "),
                       "see the likely cause above")  # fmt: skip
    return Finding("decode", "ok", "a multi-token prompt decodes (in a child process)")


# -- (b) threads ----------------------------------------------------------------------------------


def check_threads(threads: int) -> Finding:
    cores, logical = physical_cores(), os.cpu_count() or 1
    detail = f"{threads} of {cores} physical cores ({logical} logical)"
    fix = f"set HYCHAT_LLAMACPP_N_THREADS={cores} or --threads {cores}"
    if threads > cores:
        # Decode is memory-bound: hyper-threads share a core's vector units, and every thread of a
        # step waits for the slowest one.
        return Finding("threads", "warn", f"{detail}: more threads than cores adds contention", fix)
    if threads < cores:
        return Finding("threads", "warn", f"{detail}: some cores stay idle",
                       f"{fix}, unless you keep cores free for other work on purpose")  # fmt: skip
    return Finding("threads", "ok", detail)


# -- (c) the model file and its quantization, (d) memory ------------------------------------------


def check_model_file(model_path: str, kv: KvCache = KvCache()) -> list[Finding]:
    report = inspect_gguf(model_path)
    if not report.ok:
        return [Finding("model", "fail", f"{model_path}: {report.problem}",
                        f"re-download or re-convert it; `hychat inspect {model_path}` shows the details")]  # fmt: skip
    h = report.header
    detail = f"{h.path.name}: {h.architecture}, {report.n_params:,} parameters, {h.file_size / 2**20:.1f} MiB, whole"
    kv_bytes = kv_cache_bytes(h, kv)
    return [
        Finding("model", "ok", detail),
        *_run("quantization", check_quantization, report),
        *_run("kv cache", check_kv_cache, h, kv),
        *_run("memory", check_memory, h.file_size + (kv_bytes or 0), psutil.virtual_memory().available),
    ]


def kv_cache_bytes(header: GGUFHeader, kv: KvCache) -> int | None:
    per_token = kv_bytes_per_token(header, **cache_type_keywords(kv.type_k, kv.type_v))
    return None if per_token is None else per_token * kv.n_ctx * kv.parallel


def check_kv_cache(header: GGUFHeader, kv: KvCache) -> Finding:
    """What the slots' KV cache takes in its types, and in q8_0 when it is f16 (llama-server's -ctk)."""
    total = kv_cache_bytes(header, kv)
    if total is None:
        return Finding("kv cache", "warn", f"{header.architecture}: its KV cache size is not known from the file")
    detail = (f"{kv.type_k}/{kv.type_v}: {total / kv.parallel / 2**20:.1f} MiB per slot of {kv.n_ctx} tokens, "
              f"{total / 2**20:.0f} MiB for {kv.parallel} slots")  # fmt: skip
    if "f16" not in (kv.type_k, kv.type_v):
        return Finding("kv cache", "ok", detail)
    smaller = kv_cache_bytes(header, KvCache(kv.n_ctx, kv.parallel, "q8_0", "q8_0")) or 0
    advice = f"-ctk q8_0 -ctv q8_0 (HYCHAT_CACHE_TYPE_K, _V) would take {smaller / 2**20:.0f} MiB"
    return Finding("kv cache", "ok", detail, advice)


def check_quantization(report: GGUFReport) -> Finding:
    name = report.file_type
    detail = f"{name}, {report.bits_per_weight:.2f} bits per weight"
    if name in UNQUANTIZED:
        # Decode reads every weight once per token: 16 or 32 bits a weight is 4-8x the bytes of Q4.
        return Finding("quantization", "warn", f"{detail}: not quantized", QUANTIZE_ADVICE)
    return Finding("quantization", "ok", detail)


def check_memory(needed_bytes: int, available_bytes: int) -> Finding:
    """`needed_bytes`: the weights and the slots' KV cache."""
    detail = f"model and KV cache {needed_bytes / 2**30:.2f} GiB, {available_bytes / 2**30:.2f} GiB available"
    if needed_bytes > available_bytes:
        # The weights are mmap'd: what does not fit is read from disk again on every token.
        return Finding("memory", "fail", f"{detail}: the model does not fit",
                       f"use a smaller quantization ({QUANTIZE_ADVICE}) or free memory")  # fmt: skip
    if needed_bytes > MEMORY_HEADROOM * available_bytes:
        return Finding("memory", "warn", f"{detail}: little room left for the OS",
                       "use a smaller quantization or KV cache (-ctk q8_0 -ctv q8_0); close programs")  # fmt: skip
    return Finding("memory", "ok", detail)


# -- (e) CPU load from other processes ------------------------------------------------------------


def check_cpu_load(interval_s: float = 1.0) -> Finding:
    total_percent, top = sample_cpu_load(interval_s)
    return cpu_load_finding(total_percent, top)


def sample_cpu_load(interval_s: float) -> tuple[float, list[tuple[str, float]]]:
    """System-wide CPU use in percent of all CPUs, and the 3 busiest other processes (percent of one
    CPU) over `interval_s`. Both are measured over the same interval, while this process sleeps."""
    own = os.getpid()
    processes = [p for p in psutil.process_iter(["name"]) if p.pid != own]
    for p in processes:
        _cpu_percent(p)  # the first call only starts p's clock
    psutil.cpu_percent(interval=None)
    time.sleep(interval_s)
    total = psutil.cpu_percent(interval=None)
    busy = [(p.info["name"] or str(p.pid), _cpu_percent(p)) for p in processes]
    return total, sorted((b for b in busy if b[1] > 0), key=lambda b: -b[1])[:3]


def _cpu_percent(process: psutil.Process) -> float:
    try:
        return process.cpu_percent(interval=None)
    except psutil.Error:  # it ended, or belongs to someone we may not look at
        return 0.0


def cpu_load_finding(total_percent: float, top: list[tuple[str, float]]) -> Finding:
    names = ", ".join(f"{name} {percent:.0f}%" for name, percent in top)
    detail = f"{total_percent:.0f}% of all CPUs busy with other work" + (f" (top: {names})" if names else "")
    if total_percent <= BUSY_PERCENT:
        return Finding("cpu load", "ok", detail)
    if not top:
        # /proc/stat counts the whole host: in a container the busy processes may be invisible here.
        detail += "; the busy processes are not visible from here (another container or VM?)"
    return Finding("cpu load", "warn", detail,
                   "stop those processes while serving, or give llama.cpp fewer threads than cores")  # fmt: skip


# -- (f) decode probe -----------------------------------------------------------------------------


def run_probe(
    model_path: str, threads: int, probe_s: float, n_gpu_layers: int = 0, allow_amx: bool = False
) -> list[Finding]:
    """Greedy raw-prompt decode through the product's backend: up to `probe_s` seconds after the first
    token; and where the backend put the weights."""
    backend = LlamaCppBackend()  # its own: the service's singleton (and its metrics) stay untouched
    t_load = time.perf_counter()
    backend.load_model(model_path, n_ctx=PROBE_N_CTX, n_threads=threads, n_gpu_layers=n_gpu_layers, parallel=1,
                       allow_amx=allow_amx)  # fmt: skip
    load_s = time.perf_counter() - t_load
    weights = weights_finding(backend.info()["weight_buffers_mib"])
    try:
        n_tokens, ttft_s, decode_s = _timed_decode(backend, probe_s)
    finally:
        backend.unload()
    return [weights, _probe_finding(model_path, threads, probe_s, load_s, n_tokens, ttft_s, decode_s)]


def weights_finding(buffers: dict[str, float]) -> Finding:
    """The buffer types the weights went to: CPU_REPACK (repacked AVX2/AVX-512 kernels), CPU_Mapped
    (the file, mapped), AMX (llama.cpp's AMX kernels), a GPU's."""
    detail = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in buffers.items()) or "not reported by llama.cpp"
    if llama_build.AMX_BUFFER_TYPE in buffers:
        return Finding("weights", "fail", f"{detail}: the AMX kernels crash on multi-token batches "
                       f"({llama_build.AMX_ISSUE})", f"unset HYCHAT_LLAMACPP_ALLOW_AMX, or rebuild without them: "
                       f"{llama_build.rebuild_command()}")  # fmt: skip
    return Finding("weights", "ok", detail)


def _probe_finding(
    model_path: str, threads: int, probe_s: float, load_s: float, n_tokens: int, ttft_s: float, decode_s: float
) -> Finding:
    if n_tokens < 2:
        return Finding("probe", "warn", f"{n_tokens} token(s) in {probe_s:g} s: too few to time",
                       "give the probe more time (--probe-seconds)")  # fmt: skip
    tokens_per_s = (n_tokens - 1) / decode_s
    model_gb = Path(model_path).stat().st_size / 1e9
    detail = (
        f"{tokens_per_s:.1f} tokens/s decode ({n_tokens} tokens in {ttft_s + decode_s:.1f} s, "
        f"first after {ttft_s * 1000:.0f} ms, load {load_s:.1f} s, {threads} threads); "
        # gpt-fast's figure: every weight is read once per token. Small models partly fit in cache.
        f"weights read at ~{model_gb * tokens_per_s:.1f} GB/s"
    )
    return Finding("probe", "ok", detail, "compare with `hychat bench`")


def _timed_decode(backend: LlamaCppBackend, probe_s: float) -> tuple[int, float, float]:
    """(tokens, seconds to the first token, seconds from the first token to the last)."""
    # ignore_eos: the probe times decoding, whatever the model would say.
    params = SamplingParams(max_new_tokens=PROBE_N_CTX, temperature=0, ignore_eos=True)
    t_start = time.perf_counter()
    t_first = t_last = None
    n_tokens = 0
    events = iter(backend.start(GenerationRequest(params, prompt=PROBE_PROMPT)))
    try:
        for event in events:
            if event.token_id is None:
                continue
            t_last = time.perf_counter()
            t_first = t_first or t_last
            n_tokens += 1
            # Timed from the first token: a slow load or prompt must not leave nothing to measure.
            if t_last - t_first >= probe_s:
                break
    finally:
        events.close()  # closing the stream cancels the generation at once
    if t_first is None:
        return 0, probe_s, 0.0
    return n_tokens, t_first - t_start, t_last - t_first
