"""llama.cpp's own converter, at exactly the version of the installed runtime.

It ships in the llama-cpp-python source distribution under `vendor/llama.cpp` (with the `gguf-py`
it needs: PyPI's `gguf` lags behind it). The first use fetches that sdist with pip and keeps the
converter's files in the cache folder (`llama_cpp_sources`, which also gives the test harness
llama.cpp's server tests); nothing of it is copied into this repository.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from pathlib import Path

from app.pipeline.files import PipelineError, atomic_output

PACKAGE = "llama-cpp-python"
NEEDED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")


def converter_dir(cache_dir: Path) -> Path:
    """The folder holding convert_hf_to_gguf.py for the installed llama-cpp-python version."""
    return llama_cpp_sources(Path(cache_dir), "converter", NEEDED, "convert_hf_to_gguf.py")


def llama_cpp_sources(cache_dir: Path, name: str, needed: tuple[str, ...], marker: str) -> Path:
    """`cache_dir/llama.cpp-NAME-VERSION`, holding the `needed` paths of the sdist's vendor/llama.cpp
    (files or folders) at the installed version; fetched once with pip, whole or not at all. `marker`:
    a file whose presence says the folder is complete."""
    version = importlib.metadata.version(PACKAGE)
    folder = Path(cache_dir) / f"llama.cpp-{name}-{version}"
    if (folder / marker).is_file():
        return folder
    with tempfile.TemporaryDirectory() as download, atomic_output(folder) as partial:
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        command += ["--dest", download, f"{PACKAGE}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(download).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise PipelineError(f"could not fetch the {PACKAGE} {version} source distribution: {result.stderr[-500:]}")
        _extract(archives[0], partial, needed, marker)
    return folder


def _extract(archive: Path, target: Path, needed: tuple[str, ...], marker: str) -> None:
    def wanted(relative: str) -> bool:
        return any(relative == name or relative.startswith(name + "/") for name in needed)

    with tarfile.open(archive) as tar:
        root = tar.getnames()[0].split("/")[0]
        prefix = f"{root}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and wanted(m.name[len(prefix) :])]
        with tempfile.TemporaryDirectory() as scratch:
            tar.extractall(scratch, members=members, filter="data")
            if not (Path(scratch) / prefix / marker).is_file():
                raise PipelineError(f"{archive.name} holds no vendor/llama.cpp/{marker}")
            shutil.copytree(Path(scratch) / prefix, target)


def run_llama_script(folder: Path, script: str, args: list[str], vocab_pre: str | None) -> None:
    """Runs one of llama.cpp's converter scripts with its own gguf-py; its log and progress bars go on
    to the user's terminal, and the tail of it explains a failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(folder / "gguf-py")])}
    command = [sys.executable, "-m", "app.pipeline.converter_child", str(folder / script), vocab_pre or "", *args]
    before_exec = functools.partial(_tie_to_parent, os.getpid())
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=before_exec
    ) as proc:
        tail: deque[str] = deque(maxlen=40)
        try:
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line)
        except BaseException:
            # Ctrl-C: the converter stops before the caller removes its partial output, or it would
            # write on (or create the file) after the cleanup.
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise PipelineError(f"llama.cpp's {script} failed:\n" + "".join(tail).strip())


# Looked up once here: loading a library in the child, between fork and exec, could deadlock.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _tie_to_parent(parent_pid: int) -> None:
    """In the converter's process before exec. It gets SIGKILL when hychat dies, even of SIGKILL,
    which no cleanup of ours survives (Linux ties this to the thread that started it: call from one
    that outlives the conversion). It ignores SIGINT: a terminal's Ctrl-C reaches the whole process
    group, and hychat stops it, in order, itself."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # hychat died before the line above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
