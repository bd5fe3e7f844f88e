"""The AMX guard's decision over real `llama_print_system_info()` lines and CPU flag sets, the build
flags that leave the AMX kernels out, and what doctor makes of each case."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import llama_build
from app.bench.doctor import amx_finding
from app.llama_build import check_amx
from tests.conftest import REPO

# llama.cpp's CI on an Intel Xeon with AMX (native build): AMX_INT8 = 1.
AMX_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
    "AARCH64_REPACK = 1 | "
)
# llama-cpp-python 0.3.36 built here (AMD EPYC, AVX-512, no AMX): the same features but AMX.
NO_AMX_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
# The tail of /proc/cpuinfo's flags on a Sapphire Rapids Xeon, and on this project's AMD EPYC.
AMX_CPU = set(
    "avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 "  # noqa: SIM905
    "avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities avx512f avx2".split()
)
EPYC_CPU = set("avx2 avx512f avx512_bf16 avx512_vnni avx512_vbmi gfni vaes vpclmulqdq rdpid fsrm".split())  # noqa: SIM905


def test_an_amx_build_on_an_amx_cpu_keeps_weights_off_the_amx_kernels():
    check = check_amx(AMX_BUILD, AMX_CPU)
    assert check.active and check.blocked
    summary = check.summary()
    assert "crash on multi-token batches" in summary and llama_build.AMX_ISSUE in summary
    assert "CPU_REPACK" in summary  # what the guard keeps
    assert f"Rebuild without them: {llama_build.rebuild_command()}" in summary
    finding = amx_finding(check)
    assert finding.status == "warn" and "-mno-amx-int8" in finding.advice


def test_the_override_lets_weights_use_them_and_says_what_that_risks():
    check = check_amx(AMX_BUILD, AMX_CPU, allowed=True)
    assert check.active and not check.blocked
    assert check.summary().startswith("HYCHAT_LLAMACPP_ALLOW_AMX is on")
    assert amx_finding(check).status == "fail"


def test_an_amx_build_on_a_cpu_without_amx_is_left_alone():
    check = check_amx(AMX_BUILD, EPYC_CPU)
    assert check.in_build and not check.active and not check.blocked
    assert check.summary() == "this build has llama.cpp's AMX kernels; this CPU has no AMX, so they stay unused"
    assert amx_finding(check).status == "ok"


@pytest.mark.parametrize("cpu", [AMX_CPU, EPYC_CPU, set()])
@pytest.mark.parametrize("allowed", [False, True])
def test_a_build_without_amx_needs_no_guard(cpu, allowed):
    check = check_amx(NO_AMX_BUILD, cpu, allowed)
    assert not check.in_build and not check.active and not check.blocked
    assert check.summary() == "no AMX kernels in this build"


def test_this_machine_is_read_as_it_is():
    check = check_amx(llama_build.system_info(), llama_build.cpu_flags())
    assert check.in_build == ("AMX_INT8 = 1" in llama_build.system_info())
    assert check.in_cpu == ("amx_int8" in Path("/proc/cpuinfo").read_text())


def test_the_build_flags_leave_the_amx_kernels_out_and_only_on_x86_64():
    args = llama_build.cmake_args("x86_64")
    assert args.startswith("-DGGML_NATIVE=ON ")
    assert f"-DCMAKE_C_FLAGS='{llama_build.NO_AMX_FLAGS}'" in args
    assert f"-DCMAKE_CXX_FLAGS='{llama_build.NO_AMX_FLAGS}'" in args
    assert llama_build.cmake_args("aarch64") == "-DGGML_NATIVE=ON"  # ARM's compilers know no -mno-amx-*


def _predefined(*flags: str) -> str:
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "a C compiler builds llama-cpp-python: `make` needs one"
    result = subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c", "-"], input="", capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    return result.stdout


def test_the_compiler_drops_amx_even_with_a_native_march_after_the_flags():
    # CMake puts CMAKE_C_FLAGS before ggml's -march=native: on a Sapphire Rapids that still must not
    # define the macros ggml compiles its AMX kernels under (__AMX_INT8__ and __AVX512VNNI__).
    plain = _predefined("-march=sapphirerapids")
    assert "__AMX_INT8__" in plain and "__AMX_TILE__" in plain
    guarded = _predefined(*llama_build.NO_AMX_FLAGS.split(), "-march=sapphirerapids")
    assert "__AMX_INT8__" not in guarded and "__AMX_TILE__" not in guarded and "__AMX_BF16__" not in guarded
    assert "__AVX512VNNI__" in guarded and "__AVX512BF16__" in guarded  # everything else stays native


def test_the_set_up_commands_run_before_llama_cpp_is_installed():
    # `make` asks for the flags with a bare Python (-S: no site-packages, so no llama_cpp, no deps).
    bare = subprocess.run([sys.executable, "-S", "-m", "app.llama_build", "cmake-args"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.strip() == llama_build.cmake_args()
    ensure = subprocess.run([sys.executable, "-m", "app.llama_build", "ensure"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    active = check_amx(llama_build.system_info(), llama_build.cpu_flags()).active
    assert ensure.returncode == 0 and (ensure.stdout == "") == (not active), ensure.stdout + ensure.stderr
