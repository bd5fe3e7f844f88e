"""A chat template in place of the model's own (llama-server's --chat-template, --chat-template-file,
--no-jinja) and the name it is served by (--alias), on real llama.cpp with the embedded SmolLM2 and on
the PyTorch backend with a tiny HunYuan. Built-in templates are held to llama.cpp's own
`llama_chat_apply_template`, called here directly."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import llama_cpp
import pytest

from app.chat.template import render
from app.errors import ChatTemplateError, InvalidParameterError, ModelNotFoundError
from app.modelfiles.gguf import read_gguf
from app.services.chat_templates import builtin_template_names, chat_format, configured_template, read_template_file
from app.services.llamacpp_service import LlamaCppBackend
from app.services.registry import Registry
from app.types import ChatOptions, GenerationRequest
from config.settings import Settings

CHAT = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "北京有什么好吃的？"},
    {"role": "assistant", "content": "北京烤鸭很有名。"},
    {"role": "user", "content": "还有别的吗？"},
]
WEATHER = {
    "type": "function",
    "function": {"name": "天气", "parameters": {"type": "object", "properties": {"城市": {"type": "string"}}}},
}
FILE_TEMPLATE = (
    "{% for m in messages %}【{{ m.role }}】{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}【assistant】{% endif %}"
)


def llama_cpp_renders(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """llama.cpp's own rendering, the way llama-server calls it without Jinja."""
    encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(encoded))(*(llama_cpp.llama_chat_message(r, c) for r, c in encoded))
    n = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(encoded), add_generation_prompt, None, 0)
    assert n > 0, f"llama.cpp does not know {template!r}"
    buffer = ctypes.create_string_buffer(n + 1)
    llama_cpp.llama_chat_apply_template(template.encode(), chat, len(encoded), add_generation_prompt, buffer, n + 1)
    return buffer.raw[:n].decode()


@pytest.fixture(scope="module")
def own_template(model_path) -> str:
    return read_gguf(model_path).metadata["tokenizer.chat_template"]


@pytest.fixture(scope="module")
def backend(model_path):
    """A llama.cpp backend of its own (the user's singleton keeps the model's template)."""
    backend = LlamaCppBackend()
    yield backend
    backend.unload()


def prompt_text(backend, messages=CHAT, **chat) -> str:
    return backend.prompt(GenerationRequest(messages=messages, chat=ChatOptions(**chat))).text


# -- the formats, without a model ----------------------------------------------------------------


def test_the_builtin_names_are_llama_cpps():
    names = builtin_template_names()
    assert {"chatml", "llama2", "llama3", "gemma", "phi3", "mistral-v7", "deepseek3"} <= set(names)
    assert len(names) == llama_cpp.llama_chat_builtin_templates(None, 0)


@pytest.mark.parametrize("name", ["chatml", "llama3", "gemma", "phi3", "mistral-v7", "deepseek3", "llama2"])
def test_a_builtin_name_renders_what_llama_cpp_renders(name):
    fmt = chat_format(name, {})
    assert fmt.builtin is not None and fmt.template == name
    assert fmt.render(CHAT, ChatOptions()).text == llama_cpp_renders(name, CHAT)
    ends_with_user = CHAT[:2]
    assert fmt.render(ends_with_user, ChatOptions()).text == llama_cpp_renders(name, ends_with_user)


def test_a_builtin_template_describes_tools_in_the_system_prompt():
    fmt = chat_format("llama3", {})
    text = fmt.render(CHAT[:2], ChatOptions(tools=(WEATHER,))).text
    assert fmt.tool_format == "json" and not fmt.shows_tools
    system = text.split("<|eot_id|>")[0]
    assert "你是一个乐于助人的助手。" in system and '"name": "天气"' in system and "JSON object" in system
    call = {"id": "c1", "type": "function", "function": {"name": "天气", "arguments": '{"城市": "北京"}'}}
    history = [*CHAT[:2], {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "content": "晴，25度", "tool_call_id": "c1"}]  # fmt: skip
    text = fmt.render(history, ChatOptions(tools=(WEATHER,))).text
    written = '{"name": "天气", "arguments": {"城市": "北京"}}'  # the call as the model is asked to write one
    assert f"<|start_header_id|>assistant<|end_header_id|>\n\n{written}<|eot_id|>" in text
    assert "<|start_header_id|>tool<|end_header_id|>\n\n晴，25度<|eot_id|>" in text


def test_a_jinja_text_renders_as_the_models_own_would():
    fmt = chat_format(FILE_TEMPLATE, {"bos_token": "<s>"})
    assert fmt.builtin is None
    assert fmt.render(CHAT, ChatOptions()).text == render(FILE_TEMPLATE, CHAT, special_tokens={})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("llama-3", "neither one of llama.cpp's built-in chat templates (bailing, "),
        ("chat ml", "nor a Jinja template"),
        ("{% for m in messages %}", "not Jinja (line 1)"),
        ("{{ raise_exception('只接受中文') }}", "只接受中文"),
    ],
)
def test_a_value_that_is_no_template_is_refused(template, problem):
    with pytest.raises(ChatTemplateError, match=re.escape(problem)):
        chat_format(template, {})


def test_without_jinja_llama_cpp_recognises_the_models_template(own_template):
    fmt = chat_format(own_template, {}, jinja=False)  # SmolLM2's is ChatML to llama.cpp
    assert (
        fmt.render(CHAT, ChatOptions()).text
        == llama_cpp_renders(own_template, CHAT)
        == llama_cpp_renders("chatml", CHAT)
    )
    with pytest.raises(ChatTemplateError, match="llama.cpp has no built-in chat template like"):
        chat_format("{{ messages[0].content }}", {}, jinja=False)


def test_a_template_file_is_read_as_utf8_text_or_named_in_the_error(tmp_path):
    good = tmp_path / "模板.jinja"
    good.write_text(FILE_TEMPLATE, encoding="utf-8")
    assert read_template_file(str(good)) == FILE_TEMPLATE
    assert configured_template(None, str(good)) == FILE_TEMPLATE
    latin1 = tmp_path / "latin1.jinja"
    latin1.write_bytes("{{ 'café' }}".encode("latin-1"))
    syntax = tmp_path / "syntax.jinja"
    syntax.write_text("{% if %}", encoding="utf-8")
    for path, problem in [
        (tmp_path / "missing.jinja", "chat template file not found"),
        (latin1, "not a UTF-8 text file"),
        (tmp_path, "cannot read the chat template file: Is a directory"),
        (syntax, "the chat template is not Jinja (line 1)"),
    ]:
        with pytest.raises(ChatTemplateError) as caught:
            configured_template(None, str(path))
        assert str(caught.value).startswith(f"{path}: {problem}"), str(caught.value)
    with pytest.raises(ChatTemplateError, match=r"^chat_template \(--chat-template\): 'llama-3' is neither"):
        configured_template("llama-3", None)
    assert configured_template(None, None) is None


# -- loading a model with them -----------------------------------------------------------------------


def test_the_users_load_call_keeps_the_models_own_template(backend, model_path, own_template):
    backend.load_model(model_path=model_path, n_ctx=2048, n_threads=2)
    special = backend._model.chat_format.special_tokens
    assert prompt_text(backend) == render(own_template, CHAT, special_tokens=special)
    info = backend.info()
    assert (info["chat_template_override"], info["chat_template_builtin"]) == (False, None)
    assert backend.model_name == Path(model_path).name


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_a_builtin_template_replaces_the_ggufs(backend, model_path, name):
    backend.load_model(model_path=model_path, n_ctx=512, chat_template=name)
    assert prompt_text(backend) == llama_cpp_renders(name, CHAT)
    assert backend.info()["chat_template_builtin"] == name
    answer = backend.chat(CHAT[:2], max_new_tokens=4, temperature=0)
    assert isinstance(answer, str)


def test_a_jinja_template_replaces_the_ggufs_and_the_alias_names_the_model(backend, model_path):
    backend.load_model(model_path=model_path, n_ctx=512, chat_template=FILE_TEMPLATE, alias="小助手")
    assert prompt_text(backend) == render(FILE_TEMPLATE, CHAT, special_tokens={})
    assert backend.model_name == "小助手" and backend.info()["model"] == "小助手"
    assert backend.info()["chat_template_override"] is True
    generation = backend.start(GenerationRequest(messages=CHAT[:2]))
    assert generation.model_name == "小助手"
    generation.cancel()


def test_a_bad_template_fails_the_load_and_the_model_before_keeps_serving(backend, model_path):
    backend.load_model(model_path=model_path, n_ctx=512, alias="旧模型")
    for template in ("llama-3", "{% if %}"):
        with pytest.raises(ChatTemplateError):
            backend.load_model(model_path=model_path, n_ctx=512, chat_template=template)
    for bad in ({"chat_template": ""}, {"alias": ""}, {"alias": 7}):
        with pytest.raises(InvalidParameterError):
            backend.load_model(model_path=model_path, n_ctx=512, **bad)
    assert backend.model_name == "旧模型"
    assert backend.chat(CHAT[:2], max_new_tokens=2, temperature=0) is not None


def test_without_jinja_the_gguf_template_goes_through_llama_cpp(backend, model_path, own_template):
    backend.load_model(model_path=model_path, n_ctx=512, jinja=False)
    assert prompt_text(backend) == llama_cpp_renders(own_template, CHAT)
    assert backend.info()["chat_template_builtin"] == own_template


# -- the registry: the configured model's alias and template -----------------------------------------


def test_the_registry_serves_the_configured_model_by_its_aliases(model_path, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(FILE_TEMPLATE, encoding="utf-8")
    settings = Settings(_env_file=None, alias="小助手, gpt-4o", chat_template_file=str(template), llamacpp_n_ctx=512)
    backend = LlamaCppBackend()
    registry = Registry(settings, {"llamacpp": backend})
    try:
        registry.load_configured()
        assert backend.model_name == "gpt-4o"  # the first in alphabetical order, as llama-server
        assert registry.for_model("小助手") is registry.for_model("gpt-4o") is backend
        assert prompt_text(backend) == render(FILE_TEMPLATE, CHAT, special_tokens={})
        # A reload of another file serves it by its own name and template: the alias was the configured model's.
        registry.load(backend, model_path, with_lora=False)
        assert backend.model_name == Path(model_path).name
        assert backend.info()["chat_template_override"] is False
        with pytest.raises(ModelNotFoundError):
            registry.for_model("gpt-4o")
    finally:
        backend.unload()


def test_a_bad_template_setting_stops_before_any_model_loads(tmp_path):
    settings = Settings(_env_file=None, chat_template_file=str(tmp_path / "missing.jinja"))
    backend = LlamaCppBackend()
    with pytest.raises(ChatTemplateError, match="missing.jinja: chat template file not found"):
        Registry(settings, {"llamacpp": backend}).load_configured()
    assert not backend.is_loaded


# -- the PyTorch backend ------------------------------------------------------------------------------


def test_the_pytorch_backend_takes_the_same_template_and_alias(hunyuan_dir, tmp_path):
    from app.services.model_service import TorchBackend

    backend = TorchBackend()
    backend.load_model(str(hunyuan_dir), dtype="float32", chat_template="chatml", alias="混元")
    assert backend.model_name == "混元" and backend.info()["chat_template_builtin"] == "chatml"
    prompt = backend.prompt(GenerationRequest(messages=CHAT))
    assert prompt.text == llama_cpp_renders("chatml", CHAT)
    tokenizer = backend._model.tokenizer
    assert prompt.ids == tokenizer(prompt.text, add_special_tokens=True).input_ids  # the BOS, as llama-server
    backend.load_model(str(hunyuan_dir), dtype="float32", chat_template=FILE_TEMPLATE)
    assert prompt_text(backend) == render(FILE_TEMPLATE, CHAT, special_tokens={})
    assert backend.model_name == hunyuan_dir.name
    with pytest.raises(ChatTemplateError):
        backend.load_model(str(hunyuan_dir), dtype="float32", chat_template="llama-3")
    backend.unload()
