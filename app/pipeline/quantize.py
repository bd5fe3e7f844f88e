"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`)."""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from app.pipeline.files import PipelineError, atomic_output
from app.services.gguf_file import read_gguf

# Name -> llama_ftype name in llama_cpp. Types llama.cpp refuses without an importance matrix are
# marked: it answers them with a bare error code, so we say why before starting.
QUANT_TYPES = {
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
NEEDS_IMATRIX = {"q2_k_s", "iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s"}


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    quant: str
    size_bytes: int


def quantize(source: Path, target: Path, quant: str, threads: int = 0, force: bool = False) -> QuantizeResult:
    import llama_cpp

    quant = quant.lower()
    if quant in NEEDS_IMATRIX:
        raise PipelineError(f"{quant} needs an importance matrix (llama.cpp's llama-imatrix); choose another type")
    if quant not in QUANT_TYPES:
        raise PipelineError(f"unknown quantization {quant!r}; choose from {', '.join(QUANT_TYPES)}")
    header = read_gguf(source)  # a damaged input is refused before llama.cpp sees it
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANT_TYPES[quant]}")
    params.nthread = threads
    with (
        atomic_output(target, force=force, need_bytes=header.file_size, inputs=(source,)) as partial,
        tempfile.TemporaryDirectory(dir=partial.parent, prefix=".quantize-") as work,
    ):
        # llama.cpp writes into a folder of its own: once Ctrl-C has removed it, the C call (which
        # cannot be stopped) has nowhere left to create or finish a file.
        written = Path(work) / "out.gguf"
        status = _run_in_thread(llama_cpp.llama_model_quantize, str(source).encode(), str(written).encode(), params)
        if status != 0 or not written.is_file():
            raise PipelineError(f"llama.cpp could not quantize {source} to {quant} (status {status})")
        read_gguf(written)  # what we made is whole before it takes the final name
        os.replace(written, partial)
    return QuantizeResult(Path(target), quant, Path(target).stat().st_size)


def _run_in_thread(fn, *args):  # noqa: ANN001, ANN202 - a C call and its ctypes arguments
    """Runs a long C call on a thread so Ctrl-C still reaches Python: the partial output is then
    removed at once while the abandoned call finishes writing a file nobody will rename."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    return result[0]
