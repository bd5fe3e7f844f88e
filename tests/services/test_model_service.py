"""The PyTorch backend on real transformers models: the embedded SmolLM2 GGUF (dequantized) and a
tiny random HunYuanDenseV1 checkpoint built here, with real peft LoRA adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from app.errors import BackendUnavailableError, InvalidParameterError, ModelFileError, PromptTooLongError
from app.services import model_service as torch_module
from app.services.model_service import TorchBackend, fastest_cpu_dtype
from app.types import GenerationRequest, SamplingParams
from tests.torch_models import build_lora, build_tiny_gpt2, build_tiny_hunyuan

GREEDY = {"temperature": 0, "max_new_tokens": 32}


@pytest.fixture(scope="session")
def smol(model_path):
    """The user's singleton with the embedded GGUF, dequantized to float32 (~40 s: load once)."""
    from app.services.model_service import model_service

    if model_service.info().get("path") != model_path:
        model_service.load_model(model_path=model_path, dtype="float32")
    return model_service


@pytest.fixture
def hunyuan(hunyuan_dir) -> TorchBackend:
    backend = TorchBackend()
    backend.load_model(str(hunyuan_dir), dtype="float32")
    return backend


def logits(backend: TorchBackend, text: str) -> torch.Tensor:
    m = backend._model
    with torch.inference_mode():
        return m.model(torch.tensor([backend.tokenize(text)])).logits[0]


# -- the embedded model ---------------------------------------------------------------------------


def test_same_methods_as_the_llamacpp_service():
    import inspect

    from app.services.llamacpp_service import llamacpp_service
    from app.services.model_service import MODEL_AVAILABLE, model_service

    assert MODEL_AVAILABLE is True
    for name in ("load_model", "unload", "info", "generate", "generate_stream", "chat", "chat_stream", "start"):
        ours, theirs = (
            inspect.signature(getattr(model_service, name)),
            inspect.signature(getattr(llamacpp_service, name)),
        )
        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD  # keyword-only ones are llama.cpp's own (parallel)
        shared = [n for n, p in theirs.parameters.items() if p.kind == positional]
        assert list(ours.parameters)[: len(shared)] == shared, name


def test_greedy_output_is_deterministic_and_streaming_equals_non_streaming(smol):
    prompt = "你好，请介绍一下你自己。"
    first = smol.generate(prompt, **GREEDY)
    assert first.strip() and smol.generate(prompt, **GREEDY) == first
    assert "".join(smol.generate_stream(prompt, **GREEDY)) == first
    messages = [{"role": "user", "content": "用中文介绍一下北京。"}]
    assert "".join(smol.chat_stream(messages, **GREEDY)) == smol.chat(messages, **GREEDY)


def test_chinese_streams_whole_characters(smol):
    events = list(smol.start(GenerationRequest(SamplingParams(max_new_tokens=40, temperature=0), prompt="你好，我是")))
    ids = [e.token_id for e in events if e.token_id is not None]
    pieces = [e.text for e in events if e.text]
    tokenizer = smol._model.tokenizer
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids), "no token carries half a character: test proves nothing"
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
    assert events[-1].usage.completion_tokens == len(ids) == 40


def test_chat_uses_the_tokenizers_template_and_stops_at_end_of_turn(smol):
    messages = [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert smol.apply_template(messages) == (
        "<|im_start|>system\nAnswer in one short sentence.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    events = list(smol.start(GenerationRequest(SamplingParams(max_new_tokens=100, temperature=0), messages=messages)))
    text = "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop" and events[-1].usage.completion_tokens < 100
    assert "<|im_end|>" not in text and text.strip()


def test_stop_strings_and_seeds(smol):
    full = smol.generate("1, 2, 3, 4,", max_new_tokens=30, temperature=0)
    assert " 7" in full
    assert smol.generate("1, 2, 3, 4,", max_new_tokens=30, temperature=0, stop=[" 7"]) == full[: full.index(" 7")]
    sampled = {"temperature": 0.9, "max_new_tokens": 16}
    assert smol.generate("从前有一座山，", seed=3, **sampled) == smol.generate("从前有一座山，", seed=3, **sampled)


def test_a_frequency_penalty_breaks_a_repetition(smol):
    def most_repeated(**penalty) -> int:
        ids = [e.token_id for e in smol.start(GenerationRequest(
            SamplingParams(max_new_tokens=24, temperature=0, **penalty), prompt="1, 1, 1, 1, 1, 1,"
        )) if e.token_id is not None]  # fmt: skip
        return max(ids.count(t) for t in set(ids))

    assert most_repeated() >= 6 and most_repeated(frequency_penalty=2.0) < most_repeated()


def test_closing_a_stream_stops_generation_at_the_next_token(smol, monkeypatch):
    seen: list[int] = []
    original = torch_module._TokenStreamer.put

    def counting_put(self, value):  # a spy on the real streamer: counts, then does its job
        seen.append(value.numel())
        original(self, value)

    monkeypatch.setattr(torch_module._TokenStreamer, "put", counting_put)
    stream = smol.generate_stream("Once upon a time", max_new_tokens=300, temperature=0)
    next(stream), next(stream)
    stream.close()
    assert smol.generate("你好", max_new_tokens=2, temperature=0)  # queued behind: the first job has ended
    assert len(seen) - 1 - 3 <= 5  # the prompt, a few tokens, the 3 of the second call: not 300


# -- Hunyuan architecture, LoRA ---------------------------------------------------------------------


def test_tiny_hunyuan_checkpoint_loads_and_generates(hunyuan):
    info = hunyuan.info()
    assert info["architecture"] == "hunyuan_v1_dense" and info["dtype"] == "float32"
    assert info["eog_token_ids"] == [hunyuan._model.tokenizer.convert_tokens_to_ids("<|eos|>")]
    assert hunyuan.apply_template([{"role": "user", "content": "你好"}]) == "<|startoftext|>你好<|extra_0|>"
    events = list(hunyuan.start(GenerationRequest(SamplingParams(max_new_tokens=12, temperature=0), prompt="你好")))
    assert events[-1].usage.completion_tokens == 12 or events[-1].finish_reason == "stop"
    assert hunyuan.generate("你好", **GREEDY) == hunyuan.generate("你好", **GREEDY)


def test_dtype_auto_picks_the_measured_fastest(hunyuan_dir):
    backend = TorchBackend()
    backend.load_model(str(hunyuan_dir), dtype="auto")
    expected = str(fastest_cpu_dtype(256, 512)).removeprefix("torch.")
    assert backend.info()["dtype"] == expected
    backend.load_model(str(hunyuan_dir), dtype="bfloat16")
    assert backend.info()["dtype"] == "bfloat16" and next(backend._model.model.parameters()).dtype == torch.bfloat16


def test_lora_changes_logits_and_merged_equals_unmerged(hunyuan, hunyuan_dir, lora_dir):
    base = logits(hunyuan, "你好，我是混元。")
    hunyuan.load_model(str(hunyuan_dir), dtype="float32", lora_path=str(lora_dir), merge_lora=False)
    unmerged = logits(hunyuan, "你好，我是混元。")
    assert type(hunyuan._model.model).__name__ == "PeftModelForCausalLM"
    unmerged_text = hunyuan.generate("你好", **GREEDY)
    hunyuan.load_model(str(hunyuan_dir), dtype="float32", lora_path=str(lora_dir), merge_lora=True)
    merged = logits(hunyuan, "你好，我是混元。")
    assert hunyuan.info()["lora_path"] == str(lora_dir) and hunyuan.info()["lora_merged"] is True
    assert (unmerged - base).abs().max() > 1e-2  # the adapter does something
    assert (merged - unmerged).abs().max() < 1e-4
    assert hunyuan.generate("你好", **GREEDY) == unmerged_text


def test_mismatched_adapters_are_refused_with_the_reason(hunyuan, hunyuan_dir, tmp_path):
    small = build_tiny_hunyuan(tmp_path / "small", hidden=128)
    cases = {
        build_lora(small, tmp_path / "small_lora"): "size mismatch",
        build_lora(build_tiny_gpt2(tmp_path / "gpt2"), tmp_path / "gpt2_lora", ("c_attn",)): "c_attn",
        tmp_path / "missing": "no adapter_config.json",
    }
    for adapter, reason in cases.items():
        with pytest.raises(ModelFileError, match=reason) as caught:
            hunyuan.load_model(str(hunyuan_dir), lora_path=str(adapter))
        assert caught.value.path == str(adapter)
    assert hunyuan.info()["lora_path"] is None  # the model loaded before is still there
    assert hunyuan.generate("你好", max_new_tokens=4, temperature=0)


def test_bad_model_paths_and_options(hunyuan, tmp_path, model_path):
    (tmp_path / "empty").mkdir()
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(Path(model_path).read_bytes()[:50_000_000])
    for path, message in [
        (tmp_path / "nope", "file not found"),
        (tmp_path / "empty", "no config.json"),
        (truncated, "truncated: expected at least 98362432 bytes, file has 50000000"),
    ]:
        with pytest.raises(ModelFileError, match=message):
            hunyuan.load_model(str(path))
    for kwargs, message in [({"dtype": "int8"}, "dtype"), ({"n_gpu_layers": 10}, "CPU"), ({"n_ctx": 0}, "n_ctx")]:
        with pytest.raises(InvalidParameterError, match=message):
            hunyuan.load_model(str(tmp_path), **kwargs)
    assert hunyuan.is_loaded


def test_prompt_longer_than_the_context(hunyuan_dir):
    backend = TorchBackend()
    backend.load_model(str(hunyuan_dir), dtype="float32", n_ctx=32)
    with pytest.raises(PromptTooLongError, match="context window is 32 tokens"):
        backend.generate("你好，我是混元。" * 20)
    prompt_tokens = len(backend.tokenize("你好"))
    last = list(backend.start(GenerationRequest(SamplingParams(max_new_tokens=500, temperature=0), prompt="你好")))[-1]
    assert last.finish_reason == "length" and last.usage.completion_tokens == 32 - prompt_tokens


def test_unloaded_backend_says_so(hunyuan):
    hunyuan.unload()
    with pytest.raises(BackendUnavailableError, match="no model is loaded"):
        hunyuan.generate("你好")


def test_a_checkpoint_copy_with_safetensors_reports_its_size(hunyuan_dir, tmp_path):
    copy = Path(shutil.copytree(hunyuan_dir, tmp_path / "copy"))
    backend = TorchBackend()
    backend.load_model(str(copy), dtype="float32")
    assert backend.info()["size_bytes"] == sum(f.stat().st_size for f in copy.glob("*.safetensors")) > 0
