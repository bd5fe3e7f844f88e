"""Hunyuan-7B's second tokenizer layout, `hy.tiktoken` + `tokenization_hy.py` (tokenizer code loaded
with trust_remote_code), through llama.cpp's own converter: a tiny random checkpoint whose ranks come
from a byte-level BPE trained here, and whose tokenizer code is the tests' own (tiny_tokenization_hy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.modelfiles.gguf import read_gguf
from app.pipeline.compare import compare_backends
from app.pipeline.hf_to_gguf import ConvertResult, convert
from app.pipeline.merge import merge_lora
from config.settings import Settings
from tests.torch_models import TOKENIZER_CODE, build_lora, build_tiny_hunyuan_tiktoken

CACHE = Path(Settings().cache_dir)
PROMPT = "你好，我是混元。The quick brown fox"
TOKENIZER_FILES = ("hy.tiktoken", "tokenization_hy.py")


@pytest.fixture(scope="module")
def tiktoken_dir(tmp_path_factory) -> Path:
    return build_tiny_hunyuan_tiktoken(tmp_path_factory.mktemp("hy_tiktoken"))


@pytest.fixture(scope="module")
def hf_tokenizer(tiktoken_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tiktoken_dir, trust_remote_code=True, local_files_only=True)


@pytest.fixture(scope="module")
def converted(tiktoken_dir, tmp_path_factory) -> ConvertResult:
    # Its ranks are trained here, so the converter cannot know the pre-tokenizer by its hash.
    out = tmp_path_factory.mktemp("hy_tiktoken_gguf") / "base.gguf"
    return convert(tiktoken_dir, out, CACHE, outtype="f32", vocab_pre="hunyuan")


def test_the_checkpoint_has_the_7b_layout(tiktoken_dir, hf_tokenizer):
    names = {p.name for p in tiktoken_dir.iterdir()}
    assert set(TOKENIZER_FILES) <= names and "tokenizer.json" not in names
    assert type(hf_tokenizer).__name__ == "HYTokenizer"
    ranks, special = hf_tokenizer.mergeable_ranks, hf_tokenizer.special_tokens
    assert special["<|endoftext|>"] == len(ranks) and hf_tokenizer.vocab_size == len(ranks) + len(special)


def test_conversion_checks_pass_for_the_tiktoken_layout(converted, hf_tokenizer):
    eos = hf_tokenizer.special_tokens["<|eos|>"]
    text = "\n".join(converted.checks)
    assert f"EOS id {eos} matches" in text and f"end-of-generation ids [{eos}]" in text
    assert "chat template embedded" in text and "tokenizer gives the same" in text
    meta = read_gguf(converted.path).metadata
    assert meta["tokenizer.ggml.pre"] == "hunyuan" and meta["tokenizer.ggml.eos_token_id"] == eos


def test_special_tokens_of_a_rendered_chat_tokenize_alike(converted, hf_tokenizer):
    import llama_cpp

    messages = [
        {"role": "system", "content": "You are 混元."},
        {"role": "user", "content": "你好 def f(x): return x"},
        {"role": "assistant", "content": "<think>\n\n</think>\n<answer>好</answer>"},
    ]
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False)
    hf_ids = hf_tokenizer(text, add_special_tokens=False).input_ids
    vocab = llama_cpp.Llama(str(converted.path), vocab_only=True, verbose=False)
    assert vocab.tokenize(text.encode(), add_bos=False, special=True) == hf_ids
    assert {hf_tokenizer.special_tokens[t] for t in ("<|startoftext|>", "<|extra_4|>", "<|extra_0|>")} <= set(hf_ids)


def test_tiktoken_layout_f32_logits_match_transformers(converted, tiktoken_dir):
    report = compare_backends(converted.path, PROMPT, hf_path=tiktoken_dir, n_continue=16)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-2


def test_merged_checkpoint_keeps_the_tokenizer_code_and_converts(tiktoken_dir, tmp_path):
    adapter = build_lora(tiktoken_dir, tmp_path / "lora")
    merged = merge_lora(tiktoken_dir, adapter, tmp_path / "merged").path
    for name in TOKENIZER_FILES:
        assert (merged / name).read_bytes() == (tiktoken_dir / name).read_bytes()
    assert (merged / "tokenization_hy.py").read_bytes() == TOKENIZER_CODE.read_bytes()
    result = convert(merged, tmp_path / "merged.gguf", CACHE, outtype="f16", vocab_pre="hunyuan")
    assert any("tokenizer gives the same" in check for check in result.checks)
