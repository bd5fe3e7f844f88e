"""The llama.cpp backend against the real embedded model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.errors import ChatTemplateError, InvalidParameterError, PromptTooLongError
from app.types import GenerationRequest, SamplingParams
from app.services.llamacpp_service import _piece

GREEDY = {"temperature": 0, "max_new_tokens": 48}


def test_the_users_snippets_run_verbatim(model_path):
    path = model_path
    # --- verbatim from the user's guide ---
    from app.services.llamacpp_service import llamacpp_service, LLAMACPP_AVAILABLE

    llamacpp_service.load_model(model_path=path, n_ctx=2048, n_threads=8)
    text = llamacpp_service.generate(prompt="你好", max_new_tokens=256, temperature=0.7)
    pieces = []
    for piece in llamacpp_service.generate_stream(prompt="你好", max_new_tokens=256):
        pieces.append(piece)
    # --- end ---
    assert LLAMACPP_AVAILABLE is True
    assert isinstance(text, str) and text.strip()
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert llamacpp_service.info()["n_threads"] == 8


@pytest.mark.parametrize("prompt", ["你好，请介绍一下你自己。", "The capital of France is"])
def test_joined_stream_equals_generate_at_temperature_zero(service, prompt):
    streamed = "".join(service.generate_stream(prompt, seed=7, **GREEDY))
    assert streamed == service.generate(prompt, seed=7, **GREEDY)
    assert streamed.strip()


def test_chat_stream_equals_chat(service):
    messages = [{"role": "user", "content": "用中文写一首关于春天的短诗。"}]
    assert "".join(service.chat_stream(messages, **GREEDY)) == service.chat(messages, **GREEDY)


def test_a_seed_makes_sampling_repeatable(service):
    gen = {"temperature": 0.9, "max_new_tokens": 24}
    first = service.generate("从前有一座山，", seed=1234, **gen)
    assert service.generate("从前有一座山，", seed=1234, **gen) == first
    others = {service.generate("从前有一座山，", seed=s, **gen) for s in range(5)}
    assert len(others) > 1  # different seeds do sample differently


def test_chinese_streams_whole_characters_even_when_tokens_split_them(service):
    request = GenerationRequest(SamplingParams(max_new_tokens=40, temperature=0), prompt="你好，我是")
    events = list(service.start(request))
    ids = [e.token_id for e in events if e.token_id is not None]
    model = service._model
    split = [t for t in ids if not _valid_utf8(_piece(model, t))]
    assert split, "this prompt must produce tokens that carry half a character, or the test proves nothing"
    pieces = [e.text for e in events if e.text]
    assert all("\ufffd" not in p for p in pieces)
    # Every piece is whole text, and together they are exactly the decoded token bytes.
    expected = b"".join(_piece(model, t) for t in ids).decode("utf-8", errors="ignore")
    assert "".join(pieces) == expected
    assert any("\u4e00" <= ch <= "\u9fff" for ch in expected)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_usage_counts_tokens_and_time(service):
    events = list(service.start(GenerationRequest(SamplingParams(max_new_tokens=16, temperature=0), prompt="你好")))
    last = events[-1]
    assert last.finish_reason == "length"
    assert last.usage.prompt_tokens == len(service.tokenize("你好"))
    assert last.usage.completion_tokens == 16
    assert 0 < last.usage.ttft_ms <= last.usage.total_ms
    assert last.usage.decode_tokens_per_s > 0
    assert all(e.finish_reason is None for e in events[:-1])
    assert len(events) == 16 + 1  # one event per token, then the final one


def test_chat_uses_the_models_template_and_stops_at_end_of_turn(service):
    messages = [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "你好"}]
    prompt = service.apply_template(messages)
    assert prompt == (
        "<|im_start|>system\n你是一个乐于助人的助手。<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = service.tokenize(prompt)
    # <|im_start|> (id 1) and <|im_end|> (id 2) parsed as single special tokens, not split into text
    assert (ids.count(1), ids.count(2)) == (3, 2)
    # Where an unconstrained greedy answer ends depends on the CPU's arithmetic (on an AVX512 build it
    # loops on an emoji); a grammar that is complete after one sentence leaves the model nothing but
    # its end-of-generation tokens, so the turn must end there, as "stop", with no special token shown.
    params = SamplingParams(max_new_tokens=400, temperature=0, grammar='root ::= "你好！很高兴见到你。"')
    events = list(service.start(GenerationRequest(params, messages=messages)))
    text = "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop" and events[-1].usage.completion_tokens < 400
    assert text == "你好！很高兴见到你。"


def test_multi_turn_chat_keeps_the_context(service):
    turn1 = [{"role": "user", "content": "我叫李雷。请记住我的名字。"}]
    answer1 = service.chat(turn1, **GREEDY)
    turn2 = turn1 + [{"role": "assistant", "content": answer1}, {"role": "user", "content": "我叫什么名字？"}]
    prompt2 = service.apply_template(turn2)
    assert "我叫李雷" in prompt2 and answer1 in prompt2
    answer2 = service.chat(turn2, **GREEDY)  # reuses the cached first turn
    service.generate("unrelated text to overwrite the cache", max_new_tokens=8, temperature=0)
    assert service.chat(turn2, **GREEDY) == answer2  # computed from scratch: same answer


def test_stop_strings_end_the_answer_before_the_stop(service):
    full = service.generate("1, 2, 3, 4,", max_new_tokens=30, temperature=0)
    assert " 7" in full
    cut = service.generate("1, 2, 3, 4,", max_new_tokens=30, temperature=0, stop=[" 7"])
    assert cut == full[: full.index(" 7")]


def test_concurrent_calls_from_four_threads_match_solo_runs(service):
    prompts = ["你好", "The sky is", "1, 2, 3,", "北京是"]
    solo = [service.generate(p, **GREEDY) for p in prompts]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            if i % 2:
                results[i] = "".join(service.generate_stream(prompts[i], **GREEDY))
            else:
                results[i] = service.generate(prompts[i], **GREEDY)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert [results[i] for i in range(4)] == solo


def test_an_abandoned_stream_does_not_block_other_callers(service):
    stream = service.generate_stream("Once upon a time", max_new_tokens=200, temperature=0)
    assert next(stream)
    done = []
    t = threading.Thread(target=lambda: done.append(service.generate("你好", max_new_tokens=4, temperature=0)))
    t.start()
    t.join(timeout=300)
    assert done and done[0]
    stream.close()


def test_prompt_longer_than_the_context_is_refused(model_path, service):
    service.load_model(model_path=model_path, n_ctx=256)
    n_ctx = service.info()["n_ctx"]
    with pytest.raises(
        PromptTooLongError, match=f"prompt is 1600 tokens but the context window is {n_ctx} tokens per request"
    ):
        service.generate("你好" * 400)
    # A prompt that fits is answered up to the end of the context, never past it.
    prompt = ", ".join(str(i) for i in range(1, 40)) + ","
    request = GenerationRequest(SamplingParams(max_new_tokens=1000, temperature=0), prompt=prompt)
    last = list(service.start(request))[-1]
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == n_ctx - len(service.tokenize(prompt))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"temprature": 0.5}, "unknown generation parameter"),
    ],
)
def test_invalid_parameters_are_refused(service, kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        service.generate("你好", **kwargs)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "wizard", "content": "hi"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        ("hello", "must be a list"),
    ],
)
def test_invalid_messages_are_refused(service, messages, message):
    with pytest.raises(InvalidParameterError, match=message):
        service.chat(messages)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_ctx": -1}, "n_ctx"),
        ({"n_threads": 0}, "n_threads"),
        ({"n_gpu_layers": -2}, "n_gpu_layers"),
        ({"n_thread": 2}, "unknown"),
    ],
)
def test_invalid_load_options_are_refused(model_path, service, kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        service.load_model(model_path=model_path, **kwargs)
    assert service.is_loaded


def test_chat_templates_render_in_a_sandbox(service):
    from app.chat.format import ChatFormat

    model = service._model
    original = model.chat_format
    try:
        for template, message in [
            ("{{ messages.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
            ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
            ("{% set ns = namespace(_x=1) %}", "unsafe"),
        ]:
            model.chat_format = ChatFormat.from_template(template, original.special_tokens)
            with pytest.raises(ChatTemplateError, match=message):
                service.chat([{"role": "user", "content": "hi"}])
    finally:
        model.chat_format = original


def test_info_describes_the_model(service, model_path):
    info = service.info()
    assert info["loaded"] and info["path"] == model_path
    assert (info["architecture"], info["quantization"], info["chat_template"]) == ("llama", "Q4_1", True)
    assert info["n_ctx"] == 2048 and info["n_ctx_train"] == 8192 and info["size_bytes"] == 98362432
    assert info["n_params"] > 100_000_000


def test_unload_then_calls_say_no_model(model_path, service):
    from app.errors import BackendUnavailableError

    service.unload()
    assert not service.is_loaded
    with pytest.raises(BackendUnavailableError, match="no model is loaded"):
        service.generate("你好")
    service.load_model(model_path=model_path)


def test_a_request_that_meets_a_model_swap_runs_on_the_new_model(service, model_path, tmp_path):
    """The swap is made to land exactly between reading the model and submitting to its engine (a
    window of microseconds under real load) by doing it from inside the request's tokenization."""
    import shutil

    expected = service.generate("从前有座山，", max_new_tokens=8, temperature=0)
    other = tmp_path / "other.gguf"
    shutil.copyfile(model_path, other)
    tokenize, swapped = service._encode_raw, []

    def tokenize_then_swap(m, text):
        ids = tokenize(m, text)
        if not swapped:
            swapped.append(service.model_name)
            service.load_model(model_path=str(other))
        return ids

    service._encode_raw = tokenize_then_swap
    try:
        answer = service.generate("从前有座山，", max_new_tokens=8, temperature=0)
    finally:
        del service._encode_raw
    assert swapped == [Path(model_path).name] and service.model_name == "other.gguf"
    assert answer == expected  # same weights, so the same greedy answer, from the new engine
    service.load_model(model_path=model_path)


def test_n_ctx_0_is_the_models_own_training_context(model_path):
    from app.services.llamacpp_service import LlamaCppBackend

    backend = LlamaCppBackend()
    backend.load_model(model_path=model_path, n_ctx=0)
    assert backend.info()["n_ctx"] == backend.info()["n_ctx_train"] == 8192
    backend.unload()
