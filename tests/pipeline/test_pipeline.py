"""The model pipeline on a tiny random HunYuanDenseV1 checkpoint and real peft adapters, through
llama.cpp's own converter (fetched from the pinned sdist) and quantizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.pipeline.compare import compare_backends
from app.pipeline.files import PipelineError, atomic_output
from app.pipeline.hf_to_gguf import convert
from app.pipeline.lora_gguf import lora_to_gguf
from app.pipeline.merge import merge_lora
from app.pipeline.quality import compare_quality
from app.pipeline.quantize import quantize
from app.services.llamacpp_service import LlamaCppBackend
from app.types import GenerationRequest, SamplingParams
from config.settings import Settings
from tests.conftest import REPO
from tests.torch_models import build_lora

CACHE = Path(Settings().cache_dir)
PROMPT = "你好，我是混元。The quick brown fox"


@pytest.fixture(scope="module")
def built(hunyuan_dir, lora_dir, tmp_path_factory) -> dict[str, Path]:
    """base and merged checkpoints converted to f32 GGUF, and the adapter as a GGUF adapter."""
    out = tmp_path_factory.mktemp("built")
    merged = merge_lora(hunyuan_dir, lora_dir, out / "merged").path
    return {
        "merged": merged,
        "base_gguf": convert(hunyuan_dir, out / "base.gguf", CACHE, outtype="f32", vocab_pre="hunyuan").path,
        "merged_gguf": convert(merged, out / "merged.gguf", CACHE, outtype="f32", vocab_pre="hunyuan").path,
        "lora_gguf": lora_to_gguf(hunyuan_dir, lora_dir, out / "lora.gguf", CACHE),
        "out": out,
    }


def test_an_unknown_pre_tokenizer_stops_with_a_hint_and_writes_nothing(hunyuan_dir, tmp_path):
    with pytest.raises(PipelineError, match="--vocab-pre"):
        convert(hunyuan_dir, tmp_path / "x.gguf", CACHE, outtype="f32")
    assert list(tmp_path.iterdir()) == []


def test_merged_checkpoint_keeps_the_base_files(built, hunyuan_dir):
    names = {p.name for p in built["merged"].iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert not any(n.startswith("adapter") for n in names)


def test_merge_then_convert_f32_matches_transformers(built):
    report = compare_backends(built["merged_gguf"], PROMPT, hf_path=built["merged"], n_continue=16)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-2


def test_conversion_checks_pass_and_are_reported(hunyuan_dir, tmp_path):
    result = convert(hunyuan_dir, tmp_path / "c.gguf", CACHE, outtype="f16", vocab_pre="hunyuan")
    text = "\n".join(result.checks)
    assert "EOS id 1 matches" in text and "chat template embedded" in text and "tokenizer gives" in text


def test_a_missing_eod_token_id_is_caught(hunyuan_dir, tmp_path):
    broken = Path(shutil.copytree(hunyuan_dir, tmp_path / "no_eod"))
    config = json.loads((broken / "config.json").read_text())
    del config["eod_token_id"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match="EOS id is 3, the checkpoint says 1"):
        convert(broken, tmp_path / "bad.gguf", CACHE, outtype="f32", vocab_pre="hunyuan")
    assert not (tmp_path / "bad.gguf").exists()


def test_runtime_gguf_lora_equals_the_merged_model(built):
    report = compare_backends(
        built["base_gguf"], PROMPT, hf_path=built["merged"], n_continue=16, lora_path=built["lora_gguf"]
    )
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-2
    backend = LlamaCppBackend()
    backend.load_model(str(built["base_gguf"]), lora_path=str(built["lora_gguf"]))
    assert backend.info()["lora_adapters"] == [{"path": str(Path(built["lora_gguf"]).resolve()), "scale": 1.0}]
    assert _generates(backend)


def test_rslora_gets_its_own_scale(hunyuan_dir, tmp_path):
    adapter = build_lora(hunyuan_dir, tmp_path / "rslora", use_rslora=True)
    merged = merge_lora(hunyuan_dir, adapter, tmp_path / "merged").path
    base_gguf = convert(hunyuan_dir, tmp_path / "base.gguf", CACHE, outtype="f32", vocab_pre="hunyuan").path
    lora = lora_to_gguf(hunyuan_dir, adapter, tmp_path / "rslora.gguf", CACHE)
    report = compare_backends(base_gguf, PROMPT, hf_path=merged, n_continue=8, lora_path=lora)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-2


def test_dora_adapters_are_refused(hunyuan_dir, tmp_path):
    adapter = build_lora(hunyuan_dir, tmp_path / "dora", use_dora=True)
    with pytest.raises(PipelineError, match="DoRA"):
        lora_to_gguf(hunyuan_dir, adapter, tmp_path / "dora.gguf", CACHE)
    assert not (tmp_path / "dora.gguf").exists()


def test_quantized_files_load_generate_and_q8_0_keeps_top1(built):
    for quant in ("q8_0", "q4_0", "q4_k_m"):
        result = quantize(built["base_gguf"], built["out"] / f"base.{quant}.gguf", quant)
        backend = LlamaCppBackend()
        backend.load_model(str(result.path))
        assert backend.info()["quantization"] in (quant.upper(), "Q4_K_M")
        assert _generates(backend)
        if quant == "q8_0":
            quality = compare_quality(result.path, built["base_gguf"])
            assert quality.top1_agreement >= 0.95 and quality.mean_kl < 0.01


def test_quantize_refuses_overwrite_unknown_types_and_requantizing(built, model_path, tmp_path):
    target = tmp_path / "q.gguf"
    quantize(built["base_gguf"], target, "q8_0")
    with pytest.raises(PipelineError, match="exists; pass --force"):
        quantize(built["base_gguf"], target, "q8_0")
    quantize(built["base_gguf"], target, "q4_0", force=True)
    with pytest.raises(PipelineError, match="unknown quantization"):
        quantize(built["base_gguf"], tmp_path / "x.gguf", "q3_z")
    with pytest.raises(PipelineError, match="importance matrix"):
        quantize(built["base_gguf"], tmp_path / "x.gguf", "iq2_xs")
    with pytest.raises(PipelineError, match=r"is already quantized \(Q4_1\).*--allow-requantize"):
        quantize(Path(model_path), tmp_path / "x.gguf", "q8_0")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".*partial*"))


def test_an_interrupted_write_leaves_nothing_and_inputs_are_protected(tmp_path, hunyuan_dir):
    target = tmp_path / "out.gguf"
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as partial:
        partial.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PipelineError, match="refusing to write into the input"):
        with atomic_output(hunyuan_dir / "inside.gguf", inputs=(hunyuan_dir,)):
            pass
    with pytest.raises(PipelineError, match="bytes needed"):
        with atomic_output(target, need_bytes=1 << 60):
            pass


def test_hychat_inspect_reports_and_flags_damage(built, tmp_path):
    def inspect(path: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "app", "inspect", str(path)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

    good = inspect(built["base_gguf"])
    assert good.returncode == 0 and "architecture  hunyuan-dense" in good.stdout and "verdict       OK" in good.stdout
    assert "eos token     1 '<|eos|>'" in good.stdout and "chat template yes" in good.stdout
    data = built["base_gguf"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    cut = inspect(tmp_path / "cut.gguf")
    assert (
        cut.returncode == 1
        and f"truncated: expected at least {len(data)} bytes, file has {len(data) // 2}" in cut.stderr
    )
    (tmp_path / "flipped.gguf").write_bytes(b"GGUE" + data[4:])
    flipped = inspect(tmp_path / "flipped.gguf")
    assert flipped.returncode == 1 and "bad magic b'GGUE'" in flipped.stderr


def _generates(backend: LlamaCppBackend) -> bool:
    request = GenerationRequest(SamplingParams(max_new_tokens=6, temperature=0), prompt="你好")
    last = list(backend.start(request))[-1]
    return last.usage.prompt_tokens > 0 and last.finish_reason in ("stop", "length")
