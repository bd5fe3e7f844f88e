"""Importance matrices for quantization (`hychat quantize --imatrix FILE`).

llama.cpp's `llama-imatrix` writes them: a GGUF since 2025 (per weight, `<name>.in_sum2` and
`<name>.counts` in F32), a plain `.dat` before. `llama_model_quantize` takes the finished values as a C
array, but the file reading lives in llama.cpp's `common` library, which the Python bindings do not
ship; so it is read here, following `common/imatrix-loader.cpp` and `tools/quantize/quantize.cpp` of
the pinned llama.cpp: a GGUF value is in_sum2 / count per expert (1 where nothing was counted), a
legacy value is its stored sum / ncall.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import ModelFileError
from app.modelfiles.gguf import GGUF_MAGIC, GGUFHeader, read_gguf
from app.pipeline.files import PipelineError

F32 = 0
SUMS, COUNTS = ".in_sum2", ".counts"


@dataclass
class ImportanceMatrix:
    path: Path
    entries: dict[str, np.ndarray]  # weight name -> float32 values, n_per_row * n_experts
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def load_imatrix(path: Path) -> ImportanceMatrix:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: importance matrix not found")
    with path.open("rb") as f:
        is_gguf = f.read(4) == GGUF_MAGIC
    matrix = _load_gguf(path) if is_gguf else _load_legacy(path)
    if not matrix.entries:
        raise PipelineError(f"{path}: the importance matrix holds no entries")
    for name, values in matrix.entries.items():
        if not np.isfinite(values).all():
            raise PipelineError(f"{path}: the importance matrix has non-finite values for {name}")
    return matrix


def check_fits(matrix: ImportanceMatrix, model: GGUFHeader) -> None:
    """llama.cpp aborts the whole quantization on a size mismatch, and silently quantizes without the
    matrix when no name matches: both are said here, before anything is written."""
    tensors = {t.name: t for t in model.tensors}
    matched = [name for name in matrix.entries if name in tensors]
    if not matched:
        raise PipelineError(
            f"{matrix.path}: none of its {len(matrix.entries)} entries names a weight of {model.path.name}; "
            "it was computed for another model"
        )
    for name in matched:
        shape = tensors[name].shape
        expected = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if matrix.entries[name].size != expected:
            raise PipelineError(
                f"{matrix.path}: {name} has {matrix.entries[name].size} values, the model's tensor needs {expected}"
            )


def as_c_params(matrix: ImportanceMatrix, llama_cpp) -> tuple[ctypes.Array, ctypes.Array]:  # noqa: ANN001
    """The imatrix array and the metadata overrides llama-quantize records in the output (both end
    with an empty entry). The caller keeps `matrix` alive while llama.cpp reads them."""
    items = (llama_cpp.llama_model_imatrix_data * (len(matrix.entries) + 1))()
    for item, (name, values) in zip(items, matrix.entries.items(), strict=False):
        item.name = name.encode()
        item.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        item.size = values.size
    metadata: list[tuple[str, str | int]] = [("quantize.imatrix.file", matrix.path.name)]
    if matrix.datasets:
        metadata.append(("quantize.imatrix.dataset", matrix.datasets[0]))
    metadata.append(("quantize.imatrix.entries_count", len(matrix.entries)))
    if matrix.chunk_count > 0:
        metadata.append(("quantize.imatrix.chunks_count", matrix.chunk_count))
    overrides = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for override, (key, value) in zip(overrides, metadata, strict=False):
        override.key = key.encode()
        if isinstance(value, int):
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            override.value.val_i64 = value
        else:
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            override.value.val_str = value.encode()[:127]
    return items, overrides


def _load_gguf(path: Path) -> ImportanceMatrix:
    try:
        header = read_gguf(path)
    except ModelFileError as error:
        raise PipelineError(f"damaged importance matrix: {error}") from None
    meta = header.metadata
    if not all(key in meta for key in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")):
        raise PipelineError(f"{path}: not an importance matrix (no imatrix.* metadata)")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in header.tensors:
        for suffix in (SUMS, COUNTS):
            if t.name.endswith(suffix):
                if t.ggml_type != F32:
                    raise PipelineError(f"{path}: {t.name} must be F32")
                values = np.fromfile(path, np.float32, int(np.prod(t.shape)), offset=header.data_offset + t.offset)
                parts.setdefault(t.name.removesuffix(suffix), {})[suffix] = values
    entries = {}
    for name, found in parts.items():
        if len(found) != 2:
            raise PipelineError(f"{path}: {name} has sums without counts or counts without sums")
        entries[name] = _per_count(found[SUMS], np.rint(found[COUNTS]))
    datasets = meta["imatrix.datasets"]
    return ImportanceMatrix(path, entries, datasets if isinstance(datasets, list) else [], meta["imatrix.chunk_count"])


def _per_count(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    rows = sums.reshape(counts.size, -1)
    safe = np.where(counts > 0, counts, 1)[:, None]
    return np.ascontiguousarray(np.where(counts[:, None] > 0, rows / safe, 1.0).ravel(), np.float32)


def _load_legacy(path: Path) -> ImportanceMatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    try:
        (n_entries,) = take("<i")
        if n_entries < 1:
            raise PipelineError(f"{path}: not an importance matrix (no entries)")
        entries = {}
        for _ in range(n_entries):
            (length,) = take("<i")
            name = data[pos : pos + length].decode()
            pos += length
            ncall, nval = take("<ii")
            sums = np.frombuffer(data, np.float32, nval, pos).copy()
            pos += 4 * nval
            entries[name] = sums / ncall if ncall > 0 else sums
        chunk_count, datasets = 0, []
        if pos < len(data):  # the trailer (chunk count, dataset name) is optional
            (chunk_count,) = take("<i")
            (length,) = take("<i")
            if length > 0:
                datasets.append(data[pos : pos + length].decode())
    except (struct.error, ValueError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not an importance matrix (neither GGUF nor llama.cpp's legacy format)") from None
    return ImportanceMatrix(path, entries, datasets, chunk_count)
