"""The installed llama.cpp build on this CPU: what it was compiled with, where it puts a model's
weights, and the guard that keeps weights out of its AMX kernels.

llama.cpp's AMX kernels (Intel Xeon 4th generation and later; any native build on such a CPU
compiles them in) kill the process with a general protection fault on every batch of more than one
token: ggml-org/llama.cpp#20824, open PR #26954; Ollama #17205 and #17249. Single-token decodes
work, so a short smoke test hides it. Two ways out, both measured on an AMX machine:
- build without the kernels, everything else native: `cmake_args()`, which `make` uses;
- for every other build (the user's own, a GPU build, a cached wheel): load weights without the AMX
  buffer type. llama.cpp's only switch for that (`use_extra_bufts`) drops CPU_REPACK too, the
  repacked AVX2/AVX-512 kernels for Q4_0, Q4_K, IQ4_NL and Q8_0; `keep_weights_off_amx` removes AMX
  alone from the list of extra buffer types the model loader reads.

Nothing here imports llama_cpp at import time: `python -m app.llama_build cmake-args` runs
before llama-cpp-python is installed.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import platform
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
AMX_BUFFER_TYPE = "AMX"  # ggml_backend_buft_name() of the AMX buffer type
AMX_ISSUE = "ggml-org/llama.cpp#20824"
GGML_BACKEND_DEVICE_TYPE_CPU = 0


def cmake_args(machine: str | None = None) -> str:
    """CMAKE_ARGS that build llama-cpp-python for this CPU, minus the AMX kernels on x86-64 (GCC and
    Clang honour an explicit -mno-* even with -march=native after it)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return "-DGGML_NATIVE=ON"
    return f"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='{NO_AMX_FLAGS}' -DCMAKE_CXX_FLAGS='{NO_AMX_FLAGS}'"


def rebuild_command() -> str:
    """The one line that rebuilds the installed llama-cpp-python for this CPU, past pip's wheel cache."""
    version = importlib.metadata.version("llama-cpp-python")
    return (
        f'CMAKE_ARGS="{cmake_args()}" pip install --force-reinstall --no-deps --no-cache-dir '
        f"llama-cpp-python=={version}"
    )


# -- what the build and the CPU have ----------------------------------------------------------------


def system_info() -> str:
    """llama_print_system_info(): "CPU : SSE3 = 1 | AVX2 = 1 | ... | REPACK = 1 |"."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def build_features(info: str) -> set[str]:
    """The names set to 1 in a llama_print_system_info() line."""
    features = set()
    for part in info.split("|"):
        name, _, value = part.rpartition(":")[2].partition("=")
        if value.strip() == "1":
            features.add(name.strip())
    return features


@cache  # read once: every model load asks
def cpu_flags() -> frozenset[str]:
    """The CPU's own feature flags (Linux), empty where /proc/cpuinfo cannot tell."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@dataclass(frozen=True)
class AmxCheck:
    in_build: bool  # the build has llama.cpp's AMX kernels (AMX_INT8 = 1)
    in_cpu: bool  # the CPU has AMX tiles and int8 (so ggml registers the AMX buffer type)
    allowed: bool  # HYCHAT_LLAMACPP_ALLOW_AMX: the user's build is known to work

    @property
    def active(self) -> bool:
        """Weights would go to the AMX kernels without the guard."""
        return self.in_build and self.in_cpu

    @property
    def blocked(self) -> bool:
        return self.active and not self.allowed

    def summary(self) -> str:
        if self.blocked:
            return (
                f"this llama.cpp build has AMX kernels and this CPU has AMX: they crash on multi-token batches "
                f"({AMX_ISSUE}), so weights stay out of them (CPU_REPACK and the other kernels still apply). "
                f"Rebuild without them: {rebuild_command()}"
            )
        if self.active:
            return (
                f"HYCHAT_LLAMACPP_ALLOW_AMX is on: weights go to llama.cpp's AMX kernels, which crash on "
                f"multi-token batches in llama.cpp's releases so far ({AMX_ISSUE}). Unset it unless this build "
                f"is known to work, or rebuild without them: {rebuild_command()}"
            )
        if self.in_build:
            return "this build has llama.cpp's AMX kernels; this CPU has no AMX, so they stay unused"
        return "no AMX kernels in this build"


def check_amx(info: str, flags: set[str] | frozenset[str], allowed: bool = False) -> AmxCheck:
    return AmxCheck("AMX_INT8" in build_features(info), {"amx_tile", "amx_int8"} <= flags, allowed)


def check_this_machine(allowed: bool = False) -> AmxCheck:
    """`check_amx` for the installed build on this CPU."""
    return check_amx(system_info(), cpu_flags(), allowed)


# -- the guard --------------------------------------------------------------------------------------

_guard_lock = threading.Lock()  # the buffer-type list is process-wide
_warned = threading.Event()


def keep_weights_off_amx(allowed: bool = False) -> AmxCheck:
    """Sets, for every model this process loads from now on, whether its weights may go to the AMX
    buffer type; warns once per process when it keeps them off."""
    check = check_this_machine(allowed)
    with _guard_lock:
        _exclude_buffer_types({AMX_BUFFER_TYPE} if check.blocked else set())
    if check.blocked and not _warned.is_set():
        _warned.set()
        log.warning("%s", check.summary())
    return check


def extra_buffer_types() -> list[str]:
    """The names of the CPU's extra buffer types the model loader offers weights to, in its order."""
    with _guard_lock:
        array, entries = _extra_buffer_types()
        return [_name(array[i]) for i in range(len(entries)) if array[i]]


def exclude_buffer_types(names: set[str]) -> None:
    """Weights of models loaded from now on never go to these buffer types (the guard's own choice is
    remade at its next call)."""
    with _guard_lock:
        _exclude_buffer_types(names)


def _exclude_buffer_types(exclude: set[str]) -> None:
    """Rewrites, in place, the NULL-terminated array that `ggml_backend_dev_get_extra_bufts` returns
    and llama.cpp's model loader walks at every load: the original entries minus `exclude`, then NULLs.
    The array is a static of ggml-cpu's, never reallocated; the writes stay inside its length."""
    array, entries = _extra_buffer_types()
    kept = [entry for entry in entries if _name(entry) not in exclude]
    for i in range(len(entries)):
        array[i] = kept[i] if i < len(kept) else None


def _name(buffer_type: int) -> str:
    return _ggml().ggml_backend_buft_name(buffer_type).decode()


@cache
def _extra_buffer_types() -> tuple[ctypes.Array, tuple[int, ...]]:
    """The loader's array and its original entries (read once, before any rewrite)."""
    lib = _ggml()
    none = (ctypes.c_void_p * 1)(), ()
    device = lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not device:  # a build without a CPU backend
        return none
    registry = lib.ggml_backend_dev_backend_reg(device)
    address = lib.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_dev_get_extra_bufts")
    if not address:  # a CPU backend without extra buffer types
        return none
    get = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    array = get(device)
    entries = []
    while array[len(entries)]:
        entries.append(array[len(entries)])
    return array, tuple(entries)


@cache
def _ggml() -> ctypes.CDLL:
    """ggml's backend registry, from the libraries llama-cpp-python loaded."""
    from llama_cpp import _ggml as bindings

    lib = bindings.libggml
    pointer = ctypes.c_void_p
    for name, argtypes, restype in [
        ("ggml_backend_dev_by_type", [ctypes.c_int], pointer),
        ("ggml_backend_dev_backend_reg", [pointer], pointer),
        ("ggml_backend_reg_get_proc_address", [pointer, ctypes.c_char_p], pointer),
        ("ggml_backend_buft_name", [pointer], ctypes.c_char_p),
    ]:
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


# -- where a model's weights went --------------------------------------------------------------------

_BUFFER_LINE = re.compile(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB")
_loading = threading.local()


@contextmanager
def weight_buffers() -> Iterator[dict[str, float]]:
    """MiB of weights per buffer type (AMX, CPU_REPACK, CPU_Mapped, CUDA0...) of the models this
    thread loads inside the block, read off llama.cpp's own load log: no API tells."""
    _log_reader()
    found: dict[str, float] = {}
    _loading.found = found
    try:
        yield found
    finally:
        _loading.found = None


@cache  # the cache holds the callback for the process's life: one freed while C still holds it crashes
def _log_reader() -> ctypes._CFuncPtr:
    """Installs one llama.cpp log callback: it reads the buffer lines of the thread that loads, and
    hands every line on to llama-cpp-python's own callback, which prints them when a Llama is verbose."""
    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        found = getattr(_loading, "found", None)
        if found is not None and (match := _BUFFER_LINE.search(text.decode("utf-8", errors="replace"))):
            found[match[1]] = found.get(match[1], 0.0) + float(match[2])
        _logger.llama_log_callback(level, text, user_data)

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    return on_log


# -- set-up ------------------------------------------------------------------------------------------


def ensure_safe_install() -> int:
    """`make`'s check after installing: pip reuses a cached wheel whatever CMAKE_ARGS say, so a wheel
    built earlier with AMX kernels on this AMX CPU is rebuilt (with $CMAKE_ARGS, else `cmake_args()`)
    and the cached one removed, so that the next set-up caches the rebuilt one."""
    if not check_this_machine().active:
        return 0
    version = importlib.metadata.version("llama-cpp-python")
    print(f"llama-cpp-python {version} has llama.cpp's AMX kernels and this CPU has AMX ({AMX_ISSUE}): "
          "rebuilding it without them (about 10 minutes)", flush=True)  # fmt: skip
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "cache", "remove", "llama_cpp_python"], check=False)
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS") or cmake_args()}
    subprocess.run([*pip, "install", "--force-reinstall", "--no-deps", f"llama-cpp-python=={version}"],
                   env=env, check=True)  # fmt: skip
    # A fresh process: this one still holds the library it replaced. Still there (CMAKE_ARGS asked for
    # them?): the service's guard keeps weights off them, so set-up goes on.
    subprocess.run([sys.executable, "-m", __spec__.name, "check"], check=False)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["cmake-args"]:
        print(cmake_args())
        return 0
    if argv == ["ensure"]:
        return ensure_safe_install()
    if argv == ["check"]:
        check = check_this_machine()
        print(check.summary())
        return 1 if check.active else 0
    print("usage: python -m app.llama_build cmake-args | ensure | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
