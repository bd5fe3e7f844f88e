"""`hychat doctor` on the embedded model with real llama.cpp, and each check's verdicts as functions."""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from pathlib import Path

import llama_cpp

from app import llama_build
from app.bench import canary, doctor
from app.cpu import physical_cores
from app.modelfiles.gguf import read_gguf
from app.pipeline.inspect import inspect_gguf
from tests.conftest import REPO


def run_doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", "doctor", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def line(output: str, check: str) -> str:
    """The finding line of `check`, e.g. "ok    threads      2 of 2 physical cores (2 logical)"."""
    found = [x for x in output.splitlines() if re.match(rf"(ok|warn|fail) +{check} ", x)]
    assert len(found) == 1, output
    return found[0]


def test_healthy_embedded_model_passes_every_check(model_path):
    cores = physical_cores()
    result = run_doctor("--model", model_path, "--threads", str(cores), "--probe-seconds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert line(out, "build").startswith("ok") and f"llama-cpp-python {llama_cpp.__version__}" in line(out, "build")
    assert line(out, "threads").startswith(f"ok    threads      {cores} of {cores} physical cores")
    assert line(out, "quantization").startswith("ok    quantization Q4_1,")
    assert line(out, "model").startswith("ok")
    assert line(out, "amx").startswith("ok") or "crash on multi-token batches" in line(out, "amx")
    assert line(out, "decode") == "ok    decode       a multi-token prompt decodes (in a child process)"
    assert line(out, "weights").startswith("ok    weights      CPU_Mapped ")
    probe = line(out, "probe")
    tokens_per_s = float(re.search(r"([\d.]+) tokens/s", probe).group(1))
    assert tokens_per_s > 0
    assert "→ compare with `hychat bench`" in out


def test_damaged_gguf_fails_by_name_without_traceback(model_path, tmp_path):
    data = Path(model_path).read_bytes()
    bad = tmp_path / "half.gguf"
    bad.write_bytes(data[: len(data) // 2])
    result = run_doctor("--model", str(bad), "--probe-seconds", "1")
    assert result.returncode == 1
    assert line(result.stdout, "model").startswith(f"fail  model        {bad}: truncated")
    assert f"hychat inspect {bad}" in result.stdout
    assert line(result.stdout, "probe") == "warn  probe        skipped: the model file failed its check"
    assert "Traceback" not in result.stderr + result.stdout


def test_doctor_runs_without_importing_torch(model_path):
    code = (
        "import sys; from app.bench.doctor import diagnose; "
        f"diagnose({model_path!r}, 1, probe_s=0.2); assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_check_that_raises_becomes_a_failed_finding(model_path, monkeypatch):
    # A scripted failure: no real machine makes psutil raise on demand.
    def broken(*args):
        raise RuntimeError("no /proc")

    monkeypatch.setattr(doctor, "check_cpu_load", broken)
    findings = {f.check: f for f in doctor.diagnose(model_path, 1, probe_s=0)}
    assert findings["cpu load"] == doctor.Finding("cpu load", "fail", "the check itself failed: RuntimeError: no /proc")
    assert findings["model"].status == "ok"  # the other checks still ran
    assert findings["probe"].detail == "skipped: --probe-seconds is 0"


def test_unquantized_model_gets_the_quantize_advice(model_path):
    report = inspect_gguf(model_path)
    assert doctor.check_quantization(report).status == "ok"
    for file_type, name in ((1, "F16"), (0, "F32"), (32, "BF16")):
        metadata = {**report.header.metadata, "general.file_type": file_type}
        unquantized = dataclasses.replace(report, header=dataclasses.replace(report.header, metadata=metadata))
        finding = doctor.check_quantization(unquantized)
        assert finding.status == "warn" and finding.detail.startswith(name), finding
        assert "hychat quantize MODEL out.q4_k_m.gguf --type q4_k_m" in finding.advice


def test_threads_against_physical_cores():
    cores = physical_cores()
    assert doctor.check_threads(cores).status == "ok"
    over = doctor.check_threads(cores + 2)
    assert over.status == "warn" and "more threads than cores" in over.detail
    assert f"HYCHAT_LLAMACPP_N_THREADS={cores}" in over.advice and f"--threads {cores}" in over.advice
    if cores > 1:
        assert doctor.check_threads(cores - 1).status == "warn"


def test_memory_verdicts():
    gib = 2**30
    assert doctor.check_memory(1 * gib, 8 * gib).status == "ok"
    assert doctor.check_memory(7 * gib, 8 * gib).status == "warn"
    too_big = doctor.check_memory(9 * gib, 8 * gib)
    assert too_big.status == "fail" and "smaller quantization" in too_big.advice


def test_the_kv_cache_of_the_slots_in_its_types(model_path):
    """SmolLM2-135M: 30 layers of 3 K and 3 V heads of 64 values, 2 bytes each in f16 (llama.cpp's own
    log says 45 MiB for 2048 tokens)."""
    header = read_gguf(model_path)
    f16 = doctor.check_kv_cache(header, doctor.KvCache(2048, 4))
    assert f16.detail == "f16/f16: 45.0 MiB per slot of 2048 tokens, 180 MiB for 4 slots"
    assert "-ctk q8_0 -ctv q8_0" in f16.advice and "96 MiB" in f16.advice  # 34 bytes per 32 values
    q8 = doctor.check_kv_cache(header, doctor.KvCache(2048, 4, "q8_0", "q8_0"))
    assert q8.detail.startswith("q8_0/q8_0: 23.9 MiB per slot") and q8.advice is None
    assert doctor.kv_cache_bytes(header, doctor.KvCache(2048, 4, "q4_0", "f16")) == 2048 * 4 * 30 * 192 * (18 / 32 + 2)


def test_cpu_load_names_the_busy_processes():
    busy = doctor.cpu_load_finding(60.0, [("stress-ng", 190.0), ("ffmpeg", 40.0)])
    assert busy.status == "warn" and "stress-ng 190%" in busy.detail and "ffmpeg 40%" in busy.detail
    assert "fewer threads" in busy.advice
    assert "not visible" in doctor.cpu_load_finding(60.0, []).detail
    assert doctor.cpu_load_finding(5.0, [("editor", 3.0)]).status == "ok"


def test_build_features_and_a_generic_build():
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 0 | FMA = 1 | LLAMAFILE = 1 | "
    features = llama_build.build_features(info)
    assert features == {"SSE3", "AVX", "FMA", "LLAMAFILE"}
    generic = doctor._features_finding("0.3.36", features, {"avx", "avx2", "fma"}, "x86_64")
    assert generic.status == "warn" and "AVX2" in generic.detail
    assert generic.advice == f"rebuild for this CPU: {llama_build.rebuild_command()}"
    assert 'CMAKE_ARGS="-DGGML_NATIVE=ON' in generic.advice and "llama-cpp-python==0.3.36" in generic.advice
    assert doctor._features_finding("0.3.36", features, {"avx"}, "x86_64").status == "ok"  # the CPU lacks AVX2
    assert doctor._features_finding("0.3.36", {"NEON"}, {"asimd"}, "aarch64").status == "ok"


def test_weights_in_the_amx_buffer_fail_the_check():
    assert doctor.weights_finding({"CPU_Mapped": 85.3, "CPU_REPACK": 57.0}) == doctor.Finding(
        "weights", "ok", "CPU_Mapped 85.3 MiB, CPU_REPACK 57.0 MiB"
    )
    amx = doctor.weights_finding({"AMX": 57.0, "CPU_Mapped": 85.3})
    assert amx.status == "fail" and llama_build.AMX_ISSUE in amx.detail and "-mno-amx-int8" in amx.advice


def test_a_build_that_crashes_is_a_finding_not_doctor_dying(model_path, monkeypatch):
    # The decode check's child really dies by SIGSEGV; only the command it runs is swapped.
    dying = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    monkeypatch.setattr(doctor.canary, "run", functools.partial(canary.run, command=dying))
    findings = {f.check: f for f in doctor.diagnose(model_path, 1, probe_s=1)}
    assert findings["decode"].status == "fail" and "died by SIGSEGV (signal 11)" in findings["decode"].detail
    assert findings["probe"].detail == "skipped: the decode check failed"
