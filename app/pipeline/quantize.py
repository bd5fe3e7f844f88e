"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`)."""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from app.modelfiles.gguf import UNQUANTIZED, GGUFHeader, file_type_name, read_gguf, type_name
from app.pipeline.files import PipelineError, atomic_output, check_space
from app.pipeline.imatrix import as_c_params, check_fits, load_imatrix

# Name -> llama_ftype name in llama_cpp.
QUANT_TYPES = {
    "f16": "F16",
    "bf16": "BF16",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "q8_0": "Q8_0",
    "q2_k": "Q2_K",
    "q3_k_m": "Q3_K_M",
    "q4_k_s": "Q4_K_S",
    "q4_k_m": "Q4_K_M",
    "q5_k_s": "Q5_K_S",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
}
# llama.cpp refuses these without an importance matrix, with a bare error code: we say why first.
NEEDS_IMATRIX = {"q2_k_s": "Q2_K_S", "iq1_s": "IQ1_S", "iq1_m": "IQ1_M", "iq2_xxs": "IQ2_XXS", "iq2_xs": "IQ2_XS"}


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    quant: str
    size_bytes: int
    requantized_from: str | None = None  # SOURCE's quantization, when it had one (allow_requantize)


def quantize(
    source: Path,
    target: Path,
    quant: str,
    threads: int = 0,
    force: bool = False,
    imatrix: Path | None = None,
    allow_requantize: bool = False,
) -> QuantizeResult:
    """`allow_requantize`: also accept an already quantized SOURCE (llama.cpp dequantizes it first;
    the result carries both quantizations' error, so keep it for speed measurements)."""
    import llama_cpp

    quant = quant.lower()
    if quant in NEEDS_IMATRIX and imatrix is None:
        raise PipelineError(
            f"{quant} needs an importance matrix: pass --imatrix FILE (made by llama.cpp's llama-imatrix)"
        )
    ftype = QUANT_TYPES.get(quant) or NEEDS_IMATRIX.get(quant)
    if ftype is None:
        choices = ", ".join([*QUANT_TYPES, *NEEDS_IMATRIX])
        raise PipelineError(f"unknown quantization {quant!r}; choose from {choices}")
    header = read_gguf(source)  # a damaged input is refused before llama.cpp sees it
    source_quant = quantized_as(header)
    if source_quant and not allow_requantize:
        # llama.cpp refuses too, with only a status code and a log line.
        raise PipelineError(
            f"{source} is already quantized ({source_quant}): llama.cpp quantizes from F32, F16 or BF16 "
            "weights. Quantize the original (hychat convert --outtype f16), or pass --allow-requantize: the "
            "result then carries the error of both quantizations, lower quality than from the original"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    params.allow_requantize = allow_requantize
    matrix = load_imatrix(imatrix) if imatrix is not None else None
    if matrix is not None:  # held in this frame: llama.cpp reads its values through the arrays below
        check_fits(matrix, header)
        params.imatrix, params.kv_overrides = as_c_params(matrix, llama_cpp)
    with (
        atomic_output(target, force=force, need_bytes=header.file_size, inputs=(source,)) as partial,
        tempfile.TemporaryDirectory(dir=partial.parent, prefix=f"{partial.name}.") as work,
    ):
        # llama.cpp writes into a folder of its own: once Ctrl-C has removed it, the C call (which
        # cannot be stopped) has nowhere left to create or finish a file. Its name starts with the
        # partial output's, so a run killed outright leaves only what the next write clears away.
        written = Path(work) / "out.gguf"
        status = _run_in_thread(llama_cpp.llama_model_quantize, str(source).encode(), str(written).encode(), params)
        if status != 0 or not written.is_file():
            check_space(written)  # llama.cpp says only "iostream error" when the disk is full
            raise PipelineError(f"llama.cpp could not quantize {source} to {quant} (status {status})")
        read_gguf(written)  # what we made is whole before it takes the final name
        os.replace(written, partial)
    return QuantizeResult(Path(target), quant, Path(target).stat().st_size, source_quant)


def quantized_as(header: GGUFHeader) -> str | None:
    """The file's quantization when any tensor is quantized, else None (F32, F16 and BF16 weights)."""
    if all(type_name(t.ggml_type) in UNQUANTIZED for t in header.tensors):
        return None
    name = file_type_name(header.metadata.get("general.file_type"))
    return name if name not in (None, *UNQUANTIZED) else "quantized tensors"


def _run_in_thread(fn, *args):  # noqa: ANN001, ANN202 - a C call and its ctypes arguments
    """Runs a long C call on a thread so Ctrl-C still reaches Python: the partial output is then
    removed at once while the abandoned call finishes writing a file nobody will rename."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    return result[0]
