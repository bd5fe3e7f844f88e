"""Where llama.cpp puts a model's weights, read back from real loads, and the guard's mechanism:
a buffer type left out of the loader's list gets no weights, and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import llama_build
from app.pipeline.quantize import quantize
from app.services.llamacpp_service import LlamaCppBackend

PROMPT = "从前有一座山，山里有一座庙，庙里有个老和尚在给小和尚讲故事。"


@pytest.fixture(scope="module")
def q4_0(model_path, tmp_path_factory) -> str:
    """Q4_0: a type llama.cpp repacks (CPU_REPACK) on AVX2 and AVX-512, and AMX takes on an AMX CPU."""
    out = tmp_path_factory.mktemp("q4_0") / "smollm2.q4_0.gguf"
    return str(quantize(Path(model_path), out, "q4_0", allow_requantize=True).path)


@pytest.fixture
def repack_build() -> None:
    if "CPU_REPACK" not in llama_build.extra_buffer_types():
        pytest.skip("this llama.cpp build has no CPU_REPACK buffer type (REPACK = 0)")


def _load(path: str) -> LlamaCppBackend:
    backend = LlamaCppBackend()
    backend.load_model(path, n_ctx=256)
    return backend


def test_q4_0_weights_are_repacked_and_info_says_so(q4_0, repack_build):
    backend = _load(q4_0)
    buffers = backend.info()["weight_buffers_mib"]
    backend.unload()
    assert buffers["CPU_REPACK"] > 10 and buffers["CPU_Mapped"] > 10, buffers
    assert llama_build.AMX_BUFFER_TYPE not in buffers


def test_a_buffer_type_left_out_of_the_loaders_list_gets_no_weights(q4_0, repack_build):
    # The guard removes AMX this way; CPU_REPACK, which this CPU has, stands in for it here. Plain
    # llama-cpp-python: the backend's load would remake the guard's own choice.
    import llama_cpp

    before = llama_build.extra_buffer_types()
    try:
        # AMX stays out too: on an AMX CPU it would take the weights and crash the decode below.
        llama_build.exclude_buffer_types({"CPU_REPACK", llama_build.AMX_BUFFER_TYPE})
        assert llama_build.extra_buffer_types() == [name for name in before if name != "CPU_REPACK"]
        with llama_build.weight_buffers() as buffers:
            llm = llama_cpp.Llama(q4_0, n_ctx=256, verbose=False)
        assert llm(PROMPT, max_tokens=4, temperature=0)["choices"][0]["text"]  # a multi-token batch decodes
    finally:
        llama_build.keep_weights_off_amx()  # the guard's own list again, for every load after
    assert set(buffers) == {"CPU_Mapped"}, buffers
    assert llama_build.extra_buffer_types() == before
    assert "CPU_REPACK" in _load(q4_0).info()["weight_buffers_mib"]


def test_the_guard_takes_amx_out_of_the_list_and_keeps_cpu_repack():
    llama_build.keep_weights_off_amx()
    kept = llama_build.extra_buffer_types()
    assert llama_build.AMX_BUFFER_TYPE not in kept
    assert ("CPU_REPACK" in kept) == ("REPACK" in llama_build.build_features(llama_build.system_info()))


def test_the_served_model_reports_its_buffers(service):
    assert "CPU_Mapped" in service.info()["weight_buffers_mib"]
