"""Hunyuan-7B-Instruct's real chat template on three paths that share no code, on a tiny random
checkpoint in the 7B's exact tokenizer layout (tests/torch_models.py): transformers'
`apply_chat_template` on the checkpoint, the PyTorch backend on the checkpoint and the llama.cpp
backend on the GGUF the product's converter made of it. A prompt one token off the one the model
was trained on makes a fine-tune answer worse, so the ids must be identical."""

from __future__ import annotations

import pytest

from app.pipeline.template_check import CONVERSATIONS, Conversation
from app.services.llamacpp_service import LlamaCppBackend
from app.services.model_service import TorchBackend
from app.types import ChatOptions, GenerationRequest, SamplingParams
from tests.torch_models import HUNYUAN_7B_FIRST_EXTRA, HUNYUAN_7B_IDS, converted_tiny_hunyuan_7b

BOS, EOS = HUNYUAN_7B_IDS["<|startoftext|>"], HUNYUAN_7B_IDS["<|eos|>"]
EXTRA_0, EXTRA_4 = HUNYUAN_7B_FIRST_EXTRA, HUNYUAN_7B_FIRST_EXTRA + 4
NAMES = [c.name for c in CONVERSATIONS]
THINK_OFF_TAIL = "<think>\n\n</think>\n"


@pytest.fixture(scope="module")
def tiny_7b(tmp_path_factory):
    return converted_tiny_hunyuan_7b(tmp_path_factory.getbasetemp() / "tiny_hunyuan_7b")


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_7b):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tiny_7b[0], local_files_only=True)


# Backends of their own, not the singletons: other modules keep their models loaded in those.
@pytest.fixture(scope="module")
def torch_backend(tiny_7b):
    backend = TorchBackend()
    backend.load_model(str(tiny_7b[0]), n_ctx=2048, dtype="float32")
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def llama_backend(tiny_7b):
    backend = LlamaCppBackend()
    backend.load_model(model_path=str(tiny_7b[1].path), n_ctx=2048)
    yield backend
    backend.unload()


def conversation(name: str) -> Conversation:
    return next(c for c in CONVERSATIONS if c.name == name)


def hf_render(tokenizer, c: Conversation, messages=None, tokenize: bool = True):
    return tokenizer.apply_chat_template(
        [dict(m) for m in (messages or c.messages)],
        tools=[dict(t) for t in c.tools] or None,
        add_generation_prompt=True,
        tokenize=tokenize,
        return_dict=False,
        **c.template_kwargs,
    )


def with_no_think(c: Conversation) -> list[dict]:
    """What the product sends Hunyuan-7B with thinking off: /no_think opens the last user turn."""
    messages = [dict(m) for m in c.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] = "/no_think " + messages[last]["content"]
    return messages


def test_the_checkpoint_has_the_7b_special_tokens_at_the_7b_ids(tiny_7b, hf_tokenizer):
    import json

    for name, token in HUNYUAN_7B_IDS.items():
        assert hf_tokenizer.convert_tokens_to_ids(name) == token
    assert hf_tokenizer.convert_tokens_to_ids(["<|extra_0|>", "<|extra_4|>", "<|extra_204|>"]) == [
        EXTRA_0,
        EXTRA_4,
        128166,
    ]
    assert len(hf_tokenizer) == 128167  # the 7B's vocab_size
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token, hf_tokenizer.pad_token_id) == (
        "<|startoftext|>",
        "<|eos|>",
        HUNYUAN_7B_IDS["<|pad|>"],
    )
    config = json.loads((tiny_7b[0] / "config.json").read_text())
    assert (config["eod_token_id"], config["bos_token_id"], config["pad_token_id"]) == (EOS, BOS, 127961)
    assert hf_tokenizer("[PAD12345]", add_special_tokens=False).input_ids != [12345]  # fillers are unreachable


@pytest.mark.parametrize("name", NAMES)
def test_prompt_ids_are_identical_on_all_three_paths(name, hf_tokenizer, torch_backend, llama_backend):
    c = conversation(name)
    messages = with_no_think(c) if c.template_kwargs.get("enable_thinking") is False else None
    expected = hf_render(hf_tokenizer, c, messages)
    torch_ids = torch_backend.prompt(c.request()).ids
    llama_ids = llama_backend.prompt(c.request()).ids
    assert torch_ids == expected
    assert llama_ids == expected


@pytest.mark.parametrize("name", NAMES)
def test_one_bos_and_every_special_token_as_one_id(name, hf_tokenizer, torch_backend, llama_backend):
    c = conversation(name)
    for backend in (torch_backend, llama_backend):
        prompt = backend.prompt(c.request())
        assert prompt.ids[0] == BOS and prompt.ids[1] != BOS, backend.name
        for text in ("<|startoftext|>", "<|extra_0|>", "<|extra_4|>", "<|eos|>"):
            token = hf_tokenizer.convert_tokens_to_ids(text)
            assert prompt.ids.count(token) == prompt.text.count(text), (backend.name, text)
        assert prompt.text.count("<|extra_0|>") >= 1 and EXTRA_0 in prompt.ids


def test_the_system_prompt_ends_with_extra_4_and_later_user_turns_open_with_bos(llama_backend):
    ids = llama_backend.prompt(conversation("multi_turn").request()).ids
    assert ids.count(EXTRA_4) == 1 and ids.count(BOS) == 3  # the start and two later user turns
    assert ids.count(EOS) == 2  # after each earlier answer


@pytest.mark.parametrize("name", NAMES)
def test_rendered_text_is_transformers_text(name, hf_tokenizer, torch_backend, llama_backend):
    c = conversation(name)
    thinking_off = c.template_kwargs.get("enable_thinking") is False
    expected = hf_render(hf_tokenizer, c, with_no_think(c) if thinking_off else None, tokenize=False)
    assert torch_backend.prompt(c.request()).text == expected
    assert llama_backend.prompt(c.request()).text == expected
    if not thinking_off:  # no product-side edit: the very conversation transformers renders
        assert expected == hf_render(hf_tokenizer, c, tokenize=False)


def test_thinking_off_adds_the_empty_think_block_and_no_think(hf_tokenizer, torch_backend, llama_backend):
    c = conversation("thinking_off")
    tail = hf_tokenizer(THINK_OFF_TAIL, add_special_tokens=False).input_ids
    for backend in (torch_backend, llama_backend):
        prompt = backend.prompt(c.request())
        assert prompt.ids[-len(tail) :] == tail
        assert prompt.ids[-len(tail) - 1] == EXTRA_0
        assert prompt.text.startswith("<|startoftext|>/no_think " + c.messages[-1]["content"])
        assert prompt.text.endswith("<|extra_0|>" + THINK_OFF_TAIL)
    # The same switch as a request option rather than a template kwarg renders the same.
    think_option = GenerationRequest(messages=[dict(m) for m in c.messages], chat=ChatOptions(think=False))
    assert llama_backend.prompt(think_option).ids == llama_backend.prompt(c.request()).ids


def test_the_users_own_think_switch_is_kept(llama_backend):
    request = GenerationRequest(
        messages=[{"role": "user", "content": "/think 1 + 1 等于几？"}],
        chat=ChatOptions(template_kwargs={"enable_thinking": False}),
    )
    assert llama_backend.prompt(request).text.startswith("<|startoftext|>/think 1 + 1")


def test_tool_calls_and_results_render_as_the_7b_writes_them(llama_backend):
    text = llama_backend.prompt(conversation("tool_call").request()).text
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert (
        '<tool_calls><tool_call>get_weather\n```json\n{"city": "北京", "unit": "celsius"}\n```</tool_call>\n'
        '<tool_call>get_weather\n```json\n{"city": "上海", "unit": "celsius"}\n```</tool_call></tool_calls><|eos|>'
    ) in text
    assert text.endswith(
        '<|startoftext|><tool_responses><tool_response>{"temperature": 20, "condition": "晴"}</tool_response>\n'
        '<tool_response>{"temperature": 25, "condition": "多云"}</tool_response></tool_responses><|extra_0|>'
    )


def test_llama_cpp_ends_on_eos_and_shows_no_special_token(llama_backend):
    request = GenerationRequest(
        messages=[{"role": "user", "content": "你好"}],
        params=SamplingParams(temperature=0, max_new_tokens=16, grammar='root ::= "好"'),
    )
    events = list(llama_backend.start(request))
    # After "好" the grammar admits only end-of-generation tokens: the stream must end there.
    assert "".join(e.text for e in events) == "好"
    assert events[-1].finish_reason == "stop"


def test_random_output_carries_no_special_token_text(torch_backend, llama_backend):
    request = GenerationRequest(
        messages=[{"role": "user", "content": "你好"}],
        params=SamplingParams(temperature=1.0, seed=3, max_new_tokens=24),
    )
    for backend in (torch_backend, llama_backend):
        text = "".join(e.text for e in backend.start(request))
        assert "<|" not in text, backend.name


def test_both_backends_end_generation_on_eos(tiny_7b, torch_backend, llama_backend):
    import llama_cpp

    assert EOS in torch_backend.info()["eog_token_ids"]
    vocab = llama_backend._model.llm._model.vocab
    assert llama_cpp.llama_vocab_is_eog(vocab, EOS)
    assert llama_cpp.llama_vocab_get_text(vocab, EOS) == b"<|eos|>"


def test_a_tool_calling_message_without_content_renders_as_with_empty_content(hf_tokenizer, llama_backend):
    """OpenAI clients send `content: null` beside tool_calls; the 7B's template concatenates it."""
    c = conversation("tool_call")
    messages = [dict(m) for m in c.messages]
    messages[2] = {**messages[2], "content": None}
    request = GenerationRequest(messages=messages, chat=c.options())
    assert llama_backend.prompt(request).ids == hf_render(hf_tokenizer, c)  # c has content "" there


CITY = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_required_call_comes_in_the_7bs_own_format_and_matches_the_schema(llama_backend, seed):
    """A random model forced by the grammar: whatever it draws, the answer is one Hunyuan-format call
    the parser reads back, its arguments valid for the schema."""
    import json

    from app.chat.output import ChatOutputParser

    options = ChatOptions(tools=(CITY,), tool_choice="required", parallel_tool_calls=False, think=False)
    request = GenerationRequest(
        messages=[{"role": "user", "content": "北京天气？"}],
        params=SamplingParams(temperature=1.0, seed=seed, max_new_tokens=200),
        chat=options,
    )
    generation = llama_backend.start(request)
    events = list(generation)
    text = "".join(e.text for e in events)
    assert "<tool_calls><tool_call>get_weather\n```json\n" in text and events[-1].finish_reason == "stop"
    parser = ChatOutputParser(generation.prompt, options)
    answer = parser.read(e.text for e in events)
    (call,) = parser.tool_calls
    args = json.loads(call.arguments)
    assert call.name == "get_weather" and set(args) == {"city", "days"}
    assert isinstance(args["city"], str) and len(args["city"]) <= 8 and isinstance(args["days"], int)
    assert not answer.content.strip()  # the answer is the call, nothing else


@pytest.mark.parametrize("prefill", ["长城是", "好的，", "  第一点：\n"])
def test_an_assistant_prefill_is_continued_as_transformers_continues_it(
    prefill, hf_tokenizer, torch_backend, llama_backend
):
    messages = [{"role": "user", "content": "请介绍一下长城。"}, {"role": "assistant", "content": prefill}]
    expected = hf_tokenizer.apply_chat_template(
        messages, continue_final_message=True, add_generation_prompt=False, tokenize=False
    )
    for backend in (torch_backend, llama_backend):  # automatic, as llama-server, and explicit, as vLLM
        for chat in (ChatOptions(), ChatOptions(continue_final_message=True, add_generation_prompt=False)):
            assert backend.prompt(GenerationRequest(messages=messages, chat=chat)).text == expected, backend.name
    assert expected.rstrip().endswith(prefill.strip())
