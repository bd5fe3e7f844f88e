"""peft adapters on a base whose lm_head is tied to its input embeddings (tie_word_embeddings), a
tiny random HunYuanDenseV1: what llama.cpp can apply as a GGUF adapter, what lora-to-gguf refuses
up front, and the way out it names (merge-lora, then convert) giving the model peft computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.modelfiles.adapter import low_rank_on_embeddings, whole_tensors
from app.modelfiles.gguf import read_gguf
from app.pipeline.compare import compare_backends
from app.pipeline.files import PipelineError
from app.pipeline.hf_to_gguf import convert
from app.pipeline.lora_gguf import lora_to_gguf
from app.pipeline.merge import merge_lora
from config.settings import Settings
from tests.torch_models import build_lora, build_tiny_hunyuan

CACHE = Path(Settings().cache_dir)
PROMPT = "你好，我是混元。The quick brown fox"
IDS = [5, 100, 200, 300, 42, 7, 99]


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory) -> Path:
    return build_tiny_hunyuan(tmp_path_factory.mktemp("tied"), tie=True)


def test_adapter_tensors_are_sorted_by_what_llama_cpp_can_apply():
    names = [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.input_layernorm.weight",  # kept by the converter
        "base_model.model.lm_head.base_layer.weight",  # peft's copy beside a LoRA on lm_head, skipped
        "base_model.model.lm_head.lora_B.weight",
        "base_model.model.model.embed_tokens.lora_embedding_A",
        "base_model.model.model.embed_tokens.weight",  # modules_to_save
    ]
    assert whole_tensors(names) == ["base_model.model.model.embed_tokens.weight"]
    assert low_rank_on_embeddings(names) == ["lm_head", "model.embed_tokens"]


def test_lora_on_lm_head_of_a_tied_base_is_refused_and_the_merge_route_works(tied_dir, tmp_path):
    adapter = build_lora(tied_dir, tmp_path / "head", target_modules=("q_proj", "lm_head"))
    with pytest.raises(PipelineError, match=r"LoRA on lm_head.*tie_word_embeddings.*hychat merge-lora"):
        lora_to_gguf(tied_dir, adapter, tmp_path / "head.gguf", CACHE)
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*partial*"))

    merged = merge_lora(tied_dir, adapter, tmp_path / "merged").path
    assert np.abs(_logits(merged) - _peft_logits(tied_dir, adapter)).max() < 1e-4
    gguf = convert(merged, tmp_path / "merged.gguf", CACHE, outtype="f32", vocab_pre="hunyuan").path
    assert "output.weight" in _tensor_names(gguf)  # the merged head is its own matrix now
    report = compare_backends(gguf, PROMPT, hf_path=merged, n_continue=8)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-2


def test_lora_on_tied_embed_tokens_is_refused_and_merges_to_the_peft_model(tied_dir, tmp_path):
    # The converter would accept it, and llama.cpp would abort the whole process at the first decode.
    adapter = build_lora(tied_dir, tmp_path / "embed", target_modules=("q_proj", "embed_tokens"))
    with pytest.raises(PipelineError, match=r"LoRA on model\.embed_tokens.*hychat merge-lora"):
        lora_to_gguf(tied_dir, adapter, tmp_path / "embed.gguf", CACHE)
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*partial*"))
    merged = merge_lora(tied_dir, adapter, tmp_path / "merged").path
    assert np.abs(_logits(merged) - _peft_logits(tied_dir, adapter)).max() < 1e-4


def test_whole_embedding_weights_in_an_adapter_are_refused(tied_dir, tmp_path):
    adapter = build_lora(tied_dir, tmp_path / "mts", modules_to_save=["embed_tokens", "lm_head"])
    with pytest.raises(PipelineError, match=r"whole weights \(.*embed_tokens\.weight.*hychat merge-lora"):
        lora_to_gguf(tied_dir, adapter, tmp_path / "mts.gguf", CACHE)
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*partial*"))


def test_attention_lora_on_a_tied_base_runs_as_a_gguf_adapter(tied_dir, tmp_path):
    adapter = build_lora(tied_dir, tmp_path / "qv")
    lora = lora_to_gguf(tied_dir, adapter, tmp_path / "qv.gguf", CACHE)
    base = convert(tied_dir, tmp_path / "base.gguf", CACHE, outtype="f32", vocab_pre="hunyuan").path
    assert "output.weight" not in _tensor_names(base)  # tied: llama.cpp reuses token_embd
    merged = merge_lora(tied_dir, adapter, tmp_path / "merged").path
    report = compare_backends(base, PROMPT, hf_path=merged, n_continue=8, lora_path=lora)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-2


def test_lora_on_untied_embeddings_and_head_still_converts(hunyuan_dir, tmp_path):
    adapter = build_lora(hunyuan_dir, tmp_path / "untied", target_modules=("q_proj", "embed_tokens", "lm_head"))
    lora = lora_to_gguf(hunyuan_dir, adapter, tmp_path / "untied.gguf", CACHE)
    assert {"token_embd.weight.lora_a", "output.weight.lora_b"} <= _tensor_names(lora)


def _tensor_names(gguf: Path) -> set[str]:
    return {t.name for t in read_gguf(gguf).tensors}


def _logits(folder: Path) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    with torch.inference_mode():
        return model(torch.tensor([IDS])).logits[0].numpy()  # [T, V]


def _peft_logits(base: Path, adapter: Path) -> np.ndarray:
    """The adapter as trained: peft's unmerged model, its LoRA apart from the shared matrix."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    model = peft.PeftModel.from_pretrained(model, adapter)
    with torch.inference_mode():
        return model(torch.tensor([IDS])).logits[0].numpy()  # [T, V]
