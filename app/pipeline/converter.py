"""llama.cpp's own converter, at exactly the version of the installed runtime.

It ships in the llama-cpp-python source distribution under `vendor/llama.cpp` (with the `gguf-py`
it needs: PyPI's `gguf` lags behind it). The first use fetches that sdist with pip and keeps the
converter's files in the cache folder; nothing of it is copied into this repository.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
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
    version = importlib.metadata.version(PACKAGE)
    folder = Path(cache_dir) / f"llama.cpp-converter-{version}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    with tempfile.TemporaryDirectory() as download, atomic_output(folder) as partial:
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        command += ["--dest", download, f"{PACKAGE}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(download).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise PipelineError(f"could not fetch the {PACKAGE} {version} source distribution: {result.stderr[-500:]}")
        _extract_converter(archives[0], partial)
    return folder


def _extract_converter(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        root = tar.getnames()[0].split("/")[0]
        prefix = f"{root}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and _needed(m.name[len(prefix) :])]
        if not members:
            raise PipelineError(f"{archive.name} holds no vendor/llama.cpp converter")
        with tempfile.TemporaryDirectory() as scratch:
            tar.extractall(scratch, members=members, filter="data")
            shutil.copytree(Path(scratch) / prefix, target)


def _needed(relative: str) -> bool:
    return any(relative == name or relative.startswith(name + "/") for name in NEEDED)


def run_llama_script(folder: Path, script: str, args: list[str], vocab_pre: str | None) -> None:
    """Runs one of llama.cpp's converter scripts with its own gguf-py; its log and progress bars go on
    to the user's terminal, and the tail of it explains a failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(folder / "gguf-py")])}
    command = [sys.executable, "-m", "app.pipeline.run_converter", str(folder / script), vocab_pre or "", *args]
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        tail: deque[str] = deque(maxlen=40)
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
    if proc.returncode != 0:
        raise PipelineError(f"llama.cpp's {script} failed:\n" + "".join(tail).strip())
