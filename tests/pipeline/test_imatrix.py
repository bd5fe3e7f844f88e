"""Quantizing with an importance matrix through llama_model_quantize, on a tiny real HunYuan GGUF.

The matrix here weights some input columns of every weight 10^8 times more than the rest: a
quantizer that uses it must reproduce those columns far more exactly than one that does not."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.modelfiles.gguf import read_gguf, type_name
from app.pipeline.files import PipelineError
from app.pipeline.hf_to_gguf import convert
from app.pipeline.quantize import quantize
from app.services.llamacpp_service import LlamaCppBackend
from config.settings import Settings
from tests.conftest import REPO

CACHE = Path(Settings().cache_dir)
HEAVY = slice(None, None, 8)  # every 8th input column matters: each quantization block holds some of them
WEIGHT = "blk.0.attn_q.weight"


@pytest.fixture(scope="module")
def f32_gguf(hunyuan_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imatrix") / "base.f32.gguf"
    return convert(hunyuan_dir, out, CACHE, outtype="f32", vocab_pre="hunyuan").path


def _importance(f32_gguf: Path) -> dict[str, np.ndarray]:
    """Per-column mean squared activation for every matmul weight (what llama-imatrix measures)."""
    values = {}
    for t in read_gguf(f32_gguf).tensors:
        if len(t.shape) == 2 and t.name != "token_embd.weight":
            column = np.full(t.shape[0], 1e-4, np.float32)
            column[HEAVY] = 1e4
            values[t.name] = column
    return values


def _write_gguf_imatrix(path: Path, values: dict[str, np.ndarray], count: int = 100) -> Path:
    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.add_array("imatrix.datasets", ["tests"])
    writer.add_uint32("imatrix.chunk_count", 3)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name, column in values.items():
        writer.add_tensor(f"{name}.in_sum2", (column * count).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[count]], np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_legacy_imatrix(path: Path, values: dict[str, np.ndarray], ncall: int = 7) -> Path:
    """llama.cpp's pre-GGUF .dat layout: stored sums are value * ncall."""
    out = [struct.pack("<i", len(values))]
    for name, column in values.items():
        out += [struct.pack("<i", len(name)), name.encode(), struct.pack("<ii", ncall, column.size)]
        out.append((column * ncall).astype(np.float32).tobytes())
    out += [struct.pack("<ii", 3, 5), b"tests"]
    path.write_bytes(b"".join(out))
    return path


def _tensor(path: Path, name: str) -> np.ndarray:
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))


def _weighted_error(original: np.ndarray, quantized: np.ndarray, column_weight: np.ndarray) -> float:
    return float((((original - quantized) ** 2) * column_weight).sum())


def test_the_importance_matrix_steers_the_quantizer(f32_gguf, tmp_path):
    values = _importance(f32_gguf)
    matrix = _write_gguf_imatrix(tmp_path / "imatrix.gguf", values)
    plain = quantize(f32_gguf, tmp_path / "plain.gguf", "q4_k_m").path
    steered = quantize(f32_gguf, tmp_path / "steered.gguf", "q4_k_m", imatrix=matrix).path

    original = _tensor(f32_gguf, WEIGHT)
    error_plain = _weighted_error(original, _tensor(plain, WEIGHT), values[WEIGHT])
    error_steered = _weighted_error(original, _tensor(steered, WEIGHT), values[WEIGHT])
    assert error_steered < 0.5 * error_plain

    meta = read_gguf(steered).metadata
    assert meta["quantize.imatrix.file"] == "imatrix.gguf"
    assert meta["quantize.imatrix.dataset"] == "tests"
    assert meta["quantize.imatrix.entries_count"] == len(values)
    assert meta["quantize.imatrix.chunks_count"] == 3


def test_legacy_and_gguf_matrices_give_the_same_file_contents(f32_gguf, tmp_path):
    values = _importance(f32_gguf)
    as_gguf = _write_gguf_imatrix(tmp_path / "m.gguf", values)
    as_dat = _write_legacy_imatrix(tmp_path / "m.dat", values)
    from_gguf = quantize(f32_gguf, tmp_path / "a.gguf", "q4_0", imatrix=as_gguf).path
    from_dat = quantize(f32_gguf, tmp_path / "b.gguf", "q4_0", imatrix=as_dat).path
    plain = quantize(f32_gguf, tmp_path / "c.gguf", "q4_0").path
    for name in (WEIGHT, "blk.1.ffn_down.weight"):
        assert np.array_equal(_tensor(from_gguf, name), _tensor(from_dat, name))
        assert not np.array_equal(_tensor(from_gguf, name), _tensor(plain, name))


def test_a_type_that_needs_a_matrix_runs_with_one(f32_gguf, tmp_path):
    target = tmp_path / "iq2.gguf"
    command = [sys.executable, "-m", "app", "quantize", str(f32_gguf), str(target), "--type", "iq2_xs"]
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0 and "needs an importance matrix: pass --imatrix" in refused.stderr
    matrix = _write_gguf_imatrix(tmp_path / "imatrix.gguf", _importance(f32_gguf))
    subprocess.run([*command, "--imatrix", str(matrix)], cwd=REPO, check=True, capture_output=True)
    assert "IQ2_XS" in {type_name(t.ggml_type) for t in read_gguf(target).tensors}
    backend = LlamaCppBackend()
    backend.load_model(str(target), n_ctx=256)
    assert isinstance(backend.generate(prompt="你好", max_new_tokens=4, temperature=0.0), str)


def test_a_matrix_that_does_not_fit_is_refused_before_writing(f32_gguf, tmp_path):
    values = _importance(f32_gguf)
    wrong_size = dict(values, **{WEIGHT: values[WEIGHT][:100]})
    cases = {
        "has 100 values, the model's tensor needs 256": _write_gguf_imatrix(tmp_path / "size.gguf", wrong_size),
        "computed for another model": _write_gguf_imatrix(tmp_path / "other.gguf", {"blk.0.wq": values[WEIGHT]}),
        "not an importance matrix": f32_gguf,
        "non-finite": _write_gguf_imatrix(tmp_path / "nan.gguf", {WEIGHT: np.full(256, np.nan, np.float32)}),
        "neither GGUF nor": _write_text(tmp_path / "notes.txt"),
    }
    for message, matrix in cases.items():
        with pytest.raises(PipelineError, match=message):
            quantize(f32_gguf, tmp_path / "out.gguf", "q4_k_m", imatrix=matrix)
        assert not (tmp_path / "out.gguf").exists()


def _write_text(path: Path) -> Path:
    path.write_text("not a matrix")
    return path
