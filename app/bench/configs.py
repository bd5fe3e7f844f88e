"""What `hychat bench` measures: one configuration per backend and weight format."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.pipeline.inspect import inspect_gguf

# Full-precision GGUF types: a quantization's quality is measured against one of these.
REFERENCE_TYPES = ("F32", "BF16", "F16")


@dataclass(frozen=True)
class BenchConfig:
    name: str  # "llama.cpp Q4_0", "PyTorch bfloat16"
    backend: str  # "llamacpp" | "pytorch"
    model: str  # GGUF file, or checkpoint folder / GGUF for PyTorch
    weights: str  # GGUF file type ("Q4_0") or PyTorch dtype ("bfloat16")


def gguf_config(path: str | Path) -> BenchConfig:
    report = inspect_gguf(path)
    file_type = report.file_type if report.ok else "unreadable"
    return BenchConfig(f"llama.cpp {file_type}", "llamacpp", str(path), file_type)


def torch_config(model: str | Path, dtype: str) -> BenchConfig:
    return BenchConfig(f"PyTorch {dtype}", "pytorch", str(model), dtype)


def make_variants(
    source: Path, quants: list[str], out_dir: Path, progress: Callable[[str], None] = lambda line: None
) -> list[Path]:
    """GGUF files of `source` in other formats, made once by the pipeline's quantizer and kept in
    `out_dir`. A quantized source (the embedded Q4_1) is dequantized first by llama.cpp
    (allow_requantize): fine for speed and memory, while its quality figures carry both roundings."""
    from app.pipeline.quantize import quantize

    made = []
    stat = source.stat()
    # A changed source under the same name must not reuse the variants of the old one.
    version = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    for quant in quants:
        target = out_dir / f"{source.stem}.{version}.{quant}.gguf"
        if not target.is_file():
            progress(f"making {target.name}")
            with _quiet_stderr():
                quantize(source, target, quant, allow_requantize=True)
        made.append(target)
    return made


def model_bytes(path: str | Path) -> int:
    """Size of the weights: the GGUF file, or a checkpoint folder's weight files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    files = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.gguf")]
    return sum(f.stat().st_size for f in files)


def _quiet_stderr():  # noqa: ANN202 - a context manager
    """llama.cpp's quantizer prints every tensor on the C stderr, over the progress bar."""
    from llama_cpp._utils import suppress_stdout_stderr

    return suppress_stdout_stderr(disable=False)
