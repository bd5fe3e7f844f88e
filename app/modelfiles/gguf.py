"""Reads a GGUF file's header and checks that every tensor's data lies inside the file.

Written here rather than taken from `gguf.GGUFReader` because that reader parses every array element
in Python (13 s for the 98 MB default model, where llama.cpp loads in 0.3 s) and reports a truncated
file as a numpy reshape error. This scan seeks over large arrays, so it costs milliseconds, and it
runs before llama.cpp sees the file: llama.cpp aborts or crashes on some damaged files instead of
returning an error. Tensor sizes come from the runtime's own ggml library, so they match the loader.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from app.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_COUNT = 1 << 24  # far above any real model's tensor or key count; stops absurd headers early
SMALL_ARRAY = 64  # arrays up to this length keep their values; longer ones only their length
MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dimension, type, offset
MIN_KEY_VALUE = 8 + 4 + 1  # key length, value type, the smallest value

_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALARS = {kind: struct.Struct(fmt) for kind, fmt in _FORMATS.items()}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to be worth keeping (token lists, merges)."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section
    n_bytes: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def expected_size(self) -> int:
        """Smallest file size that holds every tensor's data."""
        return max((self.data_offset + t.offset + t.n_bytes for t in self.tensors), default=self.data_offset)

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")


def read_gguf(path: str | Path) -> GGUFHeader:
    """Parses the header and checks the tensor layout; raises ModelFileError naming the problem."""
    path = Path(path)
    if "\0" in str(path):
        raise ModelFileError(path, "not a file name (it contains a NUL byte)")
    try:
        exists, regular = path.exists(), path.is_file()
    except OSError as error:  # a name longer than the file system allows, a loop of symlinks...
        raise ModelFileError(path, f"not a usable file name ({error.strerror})") from None
    if not exists:
        raise ModelFileError(path, "file not found")
    # Never opened otherwise: a device (/dev/zero) or a FIFO would be read forever or block.
    if not regular:
        raise ModelFileError(path, "not a regular file")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size  # of the file opened, not of whatever the path names now
            if size == 0:
                raise ModelFileError(path, "not a GGUF file (the file is empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = _Parser(buf, path, size).parse()
    except struct.error:
        raise ModelFileError(path, f"truncated: the header ends past the end of the file ({size} bytes)") from None
    except (UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as error:
        raise ModelFileError(path, f"corrupt GGUF header ({error.__class__.__name__})") from None
    except (OSError, ValueError) as error:  # unreadable, or shrank to nothing since the check (mmap's ValueError)
        raise ModelFileError(path, f"cannot read it ({error.__class__.__name__}: {error})") from None
    _check_tensors(header)
    return header


class _Parser:
    """Walks the header through an mmap: nothing past the header is read from disk."""

    def __init__(self, buf: mmap.mmap, path: Path, size: int):
        self.buf, self.path, self.size, self.pos = buf, path, size, 0

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, problem)

    def parse(self) -> GGUFHeader:
        magic = self.buf[: len(GGUF_MAGIC)]  # a file shorter than the magic is no GGUF either
        self.pos = len(GGUF_MAGIC)
        if magic != GGUF_MAGIC:
            raise self.fail(f"not a GGUF file (bad magic {magic!r}, expected {GGUF_MAGIC!r})")
        version = self.scalar(4)
        if version not in SUPPORTED_VERSIONS:
            raise self.fail(f"unsupported GGUF version {version} (supported: {SUPPORTED_VERSIONS})")
        n_tensors, n_kv = self.scalar(10), self.scalar(10)
        if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
            raise self.fail(f"corrupt header: {n_tensors} tensors, {n_kv} metadata keys")
        if self.pos + n_tensors * MIN_TENSOR_INFO + n_kv * MIN_KEY_VALUE > self.size:
            raise self.fail(
                f"corrupt header: {n_tensors} tensors and {n_kv} metadata keys cannot fit in {self.size} bytes"
            )
        metadata = {}
        for _ in range(n_kv):
            key = self.string()
            metadata[key] = self.value(self.scalar(4))
        tensors = [self.tensor_info() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise self.fail(f"corrupt header: general.alignment is {alignment!r}")
        data_offset = -(-self.pos // alignment) * alignment
        for t in tensors:
            if t.offset % alignment:
                raise self.fail(f"corrupt header: tensor {t.name} offset {t.offset} is not aligned to {alignment}")
        return GGUFHeader(self.path, version, self.size, data_offset, metadata, tensors)

    def skip(self, n: int) -> None:
        self.pos += n
        if self.pos > self.size:
            raise struct.error("short read")

    def read(self, n: int) -> bytes:
        if n > self.size:
            raise self.fail(f"corrupt header: a field claims {n} bytes, the file has {self.size}")
        start = self.pos
        self.skip(n)
        return self.buf[start : self.pos]

    def scalar(self, kind: int) -> Any:
        fmt = _SCALARS[kind]
        value = fmt.unpack_from(self.buf, self.pos)[0]
        self.pos += fmt.size
        return value

    def string(self) -> str:
        return self.read(self.scalar(10)).decode("utf-8")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        raise self.fail(f"corrupt header: unknown metadata value type {kind}")

    def array(self) -> Any:
        kind, length = self.scalar(4), self.scalar(10)
        if length > self.size:
            raise self.fail(f"corrupt header: an array claims {length} items in a {self.size}-byte file")
        if length <= SMALL_ARRAY:
            return [self.value(kind) for _ in range(length)]
        if kind in _SCALARS:
            self.skip(length * _SCALARS[kind].size)
        elif kind == _STRING:  # token lists: tens of thousands of strings nobody needs here
            u64, buf, pos = _SCALARS[10], self.buf, self.pos
            for _ in range(length):
                pos += 8 + u64.unpack_from(buf, pos)[0]
            self.pos = pos
            self.skip(0)
        else:
            for _ in range(length):
                self.value(kind)
        return ArrayInfo(kind, length)

    def tensor_info(self) -> TensorInfo:
        name = self.string()
        n_dims = self.scalar(4)
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"corrupt header: tensor {name} has {n_dims} dimensions")
        shape = tuple(self.scalar(10) for _ in range(n_dims))
        ggml_type, offset = self.scalar(4), self.scalar(10)
        return TensorInfo(name, shape, ggml_type, offset, _tensor_bytes(self, name, shape, ggml_type))


def _tensor_bytes(parser: _Parser, name: str, shape: tuple[int, ...], ggml_type: int) -> int:
    layout = _type_layouts().get(ggml_type)
    if layout is None:
        raise parser.fail(f"corrupt header: tensor {name} has unknown ggml type {ggml_type}")
    block, block_bytes = layout
    if shape[0] % block:
        raise parser.fail(f"corrupt header: tensor {name} row of {shape[0]} does not fit its block size")
    n_rows = 1
    for dim in shape[1:]:
        n_rows *= dim
    n_bytes = shape[0] // block * block_bytes * n_rows
    if n_bytes > parser.size:
        raise parser.fail(f"truncated or corrupt: tensor {name} needs {n_bytes} bytes, the file has {parser.size}")
    return n_bytes


def _check_tensors(header: GGUFHeader) -> None:
    if header.expected_size > header.file_size:
        last = max(header.tensors, key=lambda t: t.offset + t.n_bytes)
        raise ModelFileError(
            header.path,
            f"truncated: expected at least {header.expected_size} bytes, file has {header.file_size} "
            f"(tensor {last.name} at data offset {last.offset} ends past the end)",
        )


UNQUANTIZED = frozenset({"F32", "F16", "BF16"})  # type and file type names of unquantized weights


def file_type_name(file_type: Any) -> str | None:
    """`general.file_type` as llama.cpp names it: "Q4_K_M", "F16"."""
    import llama_cpp

    if not isinstance(file_type, int):
        return None
    for name, value in vars(llama_cpp).items():
        if name.startswith("LLAMA_FTYPE_") and value == file_type and name != "LLAMA_FTYPE_GUESSED":
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return str(file_type)


def type_name(ggml_type: int) -> str:
    return _type_table().get(ggml_type, (0, 0, f"type{ggml_type}"))[2]


def _type_layouts() -> dict[int, tuple[int, int]]:
    return {t: (block, size) for t, (block, size, _) in _type_table().items()}


@cache
def _type_table() -> dict[int, tuple[int, int, str]]:
    """ggml type -> (values per block, bytes per block, name), from the ggml library llama-cpp-python
    loads, so sizes match the runtime exactly; from the `gguf` package where llama.cpp is absent
    (the PyTorch backend reading a GGUF)."""
    try:
        import llama_cpp
        from llama_cpp import _ggml
    except ImportError:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        return {int(t): (*sizes, GGMLQuantizationType(t).name) for t, sizes in GGML_QUANT_SIZES.items()}
    lib = _ggml.libggml
    lib.ggml_blck_size.argtypes, lib.ggml_blck_size.restype = [ctypes.c_int], ctypes.c_int64
    lib.ggml_type_size.argtypes, lib.ggml_type_size.restype = [ctypes.c_int], ctypes.c_size_t
    lib.ggml_type_name.argtypes, lib.ggml_type_name.restype = [ctypes.c_int], ctypes.c_char_p
    # ggml indexes a table by type: never ask it past GGML_TYPE_COUNT. Removed types have block size 0.
    table = {}
    for t in range(llama_cpp.GGML_TYPE_COUNT):
        block = lib.ggml_blck_size(t)
        if block > 0:
            table[t] = (block, lib.ggml_type_size(t), lib.ggml_type_name(t).decode().upper())
    return table
