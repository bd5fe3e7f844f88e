"""Damaged model files give ModelFileError naming the file and the problem, before llama.cpp sees
them, and a failed load leaves the model that was loaded serving."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from app.errors import ModelFileError
from app.modelfiles.gguf import read_gguf

SIZE = 98362432  # the embedded GGUF


@pytest.fixture(scope="module")
def original(model_path: str) -> bytes:
    return Path(model_path).read_bytes()


def write(tmp_path: Path, data: bytes, name: str = "damaged.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def symlink(tmp: Path, target: Path) -> Path:
    path = tmp / "link.gguf"
    path.symlink_to(target)
    return path


def fifo(tmp: Path) -> Path:
    path = tmp / "pipe.gguf"
    os.mkfifo(path)
    return path


def sparse(tmp: Path, size: int) -> Path:
    """A file of `size` zero bytes that takes no disk space: reading it whole would take minutes."""
    path = tmp / "huge.gguf"
    with path.open("wb") as f:
        f.truncate(size)
    return path


def nested_arrays(depth: int) -> bytes:
    """A header whose one metadata value is an array of an array of ... `depth` deep."""
    key = b"a"
    nested = struct.pack("<I", 9) + (struct.pack("<IQ", 9, 1) * depth) + struct.pack("<IQ", 4, 0)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + nested


def first_tensor_offset_field(data: bytes) -> int:
    name = b"token_embd.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    return at + 4 + 8 * n_dims + 4


def test_the_intact_file_passes_with_its_layout(model_path: str):
    header = read_gguf(model_path)
    assert header.file_size == header.expected_size == SIZE
    assert header.architecture == "llama" and len(header.tensors) == 272
    assert header.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")


CASES = {
    "missing": (lambda tmp, data: tmp / "nope.gguf", "file not found"),
    "directory": (lambda tmp, data: tmp, "not a regular file"),
    "dev_zero": (lambda tmp, data: Path("/dev/zero"), "not a regular file"),
    "empty": (lambda tmp, data: write(tmp, b""), r"not a GGUF file \(the file is empty\)"),
    "text": (lambda tmp, data: write(tmp, b"hello world, not a model\n"), r"not a GGUF file \(bad magic b'hell'"),
    "flipped_magic": (lambda tmp, data: write(tmp, patched(data[:4096], 0, b"FUGG")), "bad magic b'FUGG'"),
    "future_version": (lambda tmp, data: write(tmp, patched(data[:4096], 4, struct.pack("<I", 99))), "version 99"),
    "header_cut": (lambda tmp, data: write(tmp, data[:1_000_000]), "truncated: the header ends past the end"),
    "data_cut": (
        lambda tmp, data: write(tmp, data[:60_000_000]),
        f"truncated: expected at least {SIZE} bytes, file has 60000000",
    ),
    "absurd_tensor_count": (
        lambda tmp, data: write(tmp, patched(data[:4096], 8, struct.pack("<Q", 1 << 40))),
        "corrupt header: 1099511627776 tensors",
    ),
    "absurd_string_length": (
        lambda tmp, data: write(tmp, patched(data[:20_000], 24, struct.pack("<Q", 1 << 50))),
        "claims 1125899906842624 bytes",
    ),
    "absurd_tensor_offset": (
        lambda tmp, data: write(tmp, patched(data, first_tensor_offset_field(data), struct.pack("<Q", 1 << 45))),
        "truncated: expected at least .*tensor token_embd.weight at data offset 35184372088832 ends past the end",
    ),
    "dangling_symlink": (lambda tmp, data: symlink(tmp, tmp / "gone.gguf"), "file not found"),
    "symlink_to_dev_zero": (lambda tmp, data: symlink(tmp, Path("/dev/zero")), "not a regular file"),
    "fifo": (lambda tmp, data: fifo(tmp), "not a regular file"),  # opening it would block
    # 600 bytes of UTF-8, over the 255 a file name may have (a fuzzed reload path found the 500 it gave)
    "name_too_long": (lambda tmp, data: tmp / ("模" * 200 + ".gguf"), r"not a usable file name \(File name too long\)"),
    "huge_sparse_file": (lambda tmp, data: sparse(tmp, 10 << 30), r"bad magic b'\\x00\\x00\\x00\\x00'"),
    "version_1": (lambda tmp, data: write(tmp, patched(data[:4096], 4, struct.pack("<I", 1))), "version 1 "),
    "absurd_key_count": (
        lambda tmp, data: write(tmp, patched(data[:4096], 16, struct.pack("<Q", 1 << 40))),
        "corrupt header: .* 1099511627776 metadata keys",
    ),
    "key_count_past_the_file": (
        lambda tmp, data: write(tmp, patched(data[:4096], 16, struct.pack("<Q", 1_000_000))),
        "272 tensors and 1000000 metadata keys cannot fit in 4096 bytes",
    ),
    "tensor_count_past_the_file": (
        lambda tmp, data: write(tmp, patched(data[:4096], 8, struct.pack("<Q", 1_000_000))),
        "1000000 tensors and .* metadata keys cannot fit in 4096 bytes",
    ),
    "nested_arrays": (lambda tmp, data: write(tmp, nested_arrays(5000)), r"corrupt GGUF header \(RecursionError\)"),
    "misaligned_tensor_offset": (
        lambda tmp, data: write(tmp, patched(data, first_tensor_offset_field(data), struct.pack("<Q", 3))),
        "not aligned to 32",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_file_is_refused_with_a_clear_message(case, tmp_path, original, service):
    make, message = CASES[case]
    path = make(tmp_path, original)
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=message) as caught:
        service.load_model(model_path=str(path))
    assert time.perf_counter() - start < 2  # a header scan: nothing reads the whole file
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    # The model loaded before keeps answering.
    assert service.is_loaded
    assert service.generate("你好", max_new_tokens=4, temperature=0)


def test_inputs_are_never_modified(tmp_path, original, service):
    path = write(tmp_path, original[:60_000_000])
    with pytest.raises(ModelFileError):
        service.load_model(model_path=str(path))
    assert path.read_bytes() == original[:60_000_000]


def test_a_copy_of_the_model_loads(tmp_path, model_path, service):
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, copy)
    service.load_model(model_path=str(copy), n_ctx=512)
    assert service.info()["path"] == str(copy) and service.info()["n_ctx"] == 512
