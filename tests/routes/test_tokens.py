"""The tokenizer routes (`POST /tokenize`, `/detokenize`, `/apply-template`, as llama-server has them)
through a real server: llama.cpp on the embedded SmolLM2 GGUF, and the PyTorch backend on a tiny
random HunYuan checkpoint beside it, which `"model": "pytorch"` picks."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import pytest

from app.protocol.tokens import MAX_TOKEN_IDS

KEY = "tokens-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHINESE = "你好，世界。请用中文介绍一下长城。"
MESSAGES = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
# What SmolLM2's own template makes of MESSAGES (ChatML).
CHATML = "<|im_start|>system\n你是助手<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
IM_START = 1  # SmolLM2's <|im_start|>, which is also its BOS token
ROUTES = ("/tokenize", "/detokenize", "/apply-template")


@pytest.fixture(scope="module")
def server(start_server, torch_beside_env):
    return start_server({**torch_beside_env, "HYCHAT_API_KEY": KEY})


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
        yield c


def tokenize(client: httpx.Client, content: str, **options) -> list:
    r = client.post("/tokenize", json={"content": content, **options})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def detokenize(client: httpx.Client, ids: list[int], **options) -> str:
    r = client.post("/detokenize", json={"tokens": ids, **options})
    assert r.status_code == 200, r.text
    return r.json()["content"]


def joined(pieces: list[dict]) -> bytes:
    return b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)


@pytest.mark.parametrize("model", [{}, {"model": "llamacpp"}, {"model": "pytorch"}])
def test_chinese_text_round_trips(client, model):
    ids = tokenize(client, CHINESE, **model)
    assert ids and all(isinstance(i, int) for i in ids)
    assert detokenize(client, ids, **model) == CHINESE


def test_model_picks_the_backend(client):
    default, llamacpp = tokenize(client, CHINESE), tokenize(client, CHINESE, model="llamacpp")
    by_name = tokenize(client, CHINESE, model="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert default == llamacpp == by_name
    assert tokenize(client, CHINESE, model="pytorch") != default  # another vocabulary
    r = client.post("/tokenize", json={"content": CHINESE, "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and "gpt-4" in r.text


@pytest.mark.parametrize("model", [{}, {"model": "pytorch"}])
def test_pieces_joined_are_the_texts_bytes(client, model):
    pieces = tokenize(client, CHINESE, with_pieces=True, **model)
    assert [p["id"] for p in pieces] == tokenize(client, CHINESE, **model)
    assert joined(pieces) == CHINESE.encode()
    for p in pieces:  # text exactly where the token's bytes are valid UTF-8 on their own
        if isinstance(p["piece"], list):
            with pytest.raises(UnicodeDecodeError):
                bytes(p["piece"]).decode()


def test_a_character_split_across_tokens_shows_as_bytes(client):
    # SmolLM2 has no token for 你 or 好: each is two tokens of bytes. 用, 中, 文 are one token each.
    pieces = tokenize(client, "你好", with_pieces=True)
    assert [p["piece"] for p in pieces] == [[0xE4, 0xBD], [0xA0], [0xE5, 0xA5], [0xBD]]
    assert [p["piece"] for p in tokenize(client, "用中文", with_pieces=True)] == ["用", "中", "文"]


def test_parse_special(client):
    assert tokenize(client, "<|im_start|>") == [IM_START]  # llama-server's default: parse_special true
    assert tokenize(client, "<|im_start|>", parse_special=True) == [IM_START]
    plain = tokenize(client, "<|im_start|>", parse_special=False)
    assert len(plain) > 1 and IM_START not in plain
    assert detokenize(client, plain) == "<|im_start|>"
    assert tokenize(client, "<|im_start|>", with_pieces=True) == [{"id": IM_START, "piece": "<|im_start|>"}]


def test_add_special_follows_the_gguf(client):
    # SmolLM2's GGUF says tokenizer.ggml.add_bos_token = false: no BOS even when asked, as in llama-server.
    assert tokenize(client, "hi", add_special=True) == tokenize(client, "hi", add_special=False)
    assert IM_START not in tokenize(client, "hi", add_special=True)


def test_add_special_adds_the_bos_only_when_asked(start_server, model_path, tmp_path):
    server = start_server({"HYCHAT_LLAMACPP_MODEL_PATH": str(with_add_bos(model_path, tmp_path / "bos.gguf"))})
    with httpx.Client(base_url=server.url, timeout=300) as other:
        ids = tokenize(other, "hi")
        assert ids and ids[0] != IM_START
        assert tokenize(other, "hi", add_special=False) == ids
        assert tokenize(other, "hi", add_special=True) == [IM_START, *ids]


def with_add_bos(source: str, path: Path) -> Path:
    """A copy of the GGUF whose tokenizer.ggml.add_bos_token is true (key, type bool, value)."""
    key = b"tokenizer.ggml.add_bos_token"
    entry = struct.pack("<Q", len(key)) + key + struct.pack("<I", 7)  # 7: GGUF's bool
    data = Path(source).read_bytes()
    assert data.count(entry + b"\x00") == 1
    path.write_bytes(data.replace(entry + b"\x00", entry + b"\x01"))
    return path


def test_apply_template_is_the_text_the_model_is_given(client):
    r = client.post("/apply-template", json={"messages": MESSAGES})
    assert r.status_code == 200, r.text
    assert r.json() == {"prompt": CHATML}
    ids = tokenize(client, CHATML, parse_special=True)
    assert ids[0] == IM_START and ids.count(IM_START) == 3
    assert detokenize(client, ids) == CHATML
    chat = client.post("/v1/chat/completions", json={"model": "default", "messages": MESSAGES, "max_tokens": 1})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == len(ids)


def test_apply_template_on_the_pytorch_backend(client):
    r = client.post("/apply-template", json={"model": "pytorch", "messages": MESSAGES})
    assert r.status_code == 200, r.text
    prompt = r.json()["prompt"]
    assert prompt == "<|startoftext|>你是助手<|extra_4|>你好<|extra_0|>"  # tests/torch_models.py's template
    ids = tokenize(client, prompt, model="pytorch")
    chat = client.post("/v1/chat/completions", json={"model": "pytorch", "messages": MESSAGES, "max_tokens": 1})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == len(ids)


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {}}},
}


def test_apply_template_shows_the_tools_as_the_model_sees_them(client):
    # SmolLM2's template ignores `tools`: they are described in the system prompt instead.
    body = {"messages": MESSAGES, "tools": [WEATHER]}
    prompt = client.post("/apply-template", json=body).json()["prompt"]
    assert prompt.startswith("<|im_start|>system\n你是助手\n\n") and '"name": "get_weather"' in prompt
    assert prompt.endswith("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    chat = client.post("/v1/chat/completions", json={**body, "model": "default", "max_tokens": 1})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == len(tokenize(client, prompt))
    none = client.post("/apply-template", json={**body, "tool_choice": "none"})
    assert none.json() == {"prompt": CHATML}


def test_apply_template_takes_the_servers_chat_defaults(start_server):
    # HYCHAT_CONTEXT_OVERFLOW=truncate: the oldest turns are left out until the prompt fits, for
    # /v1/chat/completions and so for /apply-template too.
    server = start_server({"HYCHAT_CONTEXT_OVERFLOW": "truncate", "HYCHAT_LLAMACPP_N_CTX": "256"})
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}: " + "word " * 40} for i in range(7)]
    messages = [{"role": "system", "content": "你是助手"}, *turns]
    with httpx.Client(base_url=server.url, timeout=300) as other:
        prompt = other.post("/apply-template", json={"messages": messages}).json()["prompt"]
        assert "你是助手" in prompt and "turn 6:" in prompt and "turn 0:" not in prompt
        chat = other.post("/v1/chat/completions", json={"model": "default", "messages": messages, "max_tokens": 1})
        assert chat.status_code == 200, chat.text
        assert chat.json()["usage"]["prompt_tokens"] == len(tokenize(other, prompt)) < 256


def test_apply_template_checks_the_body_as_chat_completions_does(client):
    for body, status, needle in [
        ({"messages": [], "continue_final_message": True}, 400, "continue_final_message"),
        ({"messages": MESSAGES, "model": "gpt-4"}, 404, "gpt-4"),
        ({"messages": MESSAGES, "max_tokens": 10**9}, 400, "HYCHAT_MAX_TOKENS_LIMIT"),
        ({"messages": MESSAGES, "unknown": 1}, 400, "unknown"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "only text parts"),
    ]:
        r = client.post("/apply-template", json=body)
        assert r.status_code == status and needle in r.json()["error"]["message"], (body, r.text)


def test_an_id_outside_the_vocabulary_is_a_400_naming_it(client):
    n_vocab = 49152  # SmolLM2's
    assert detokenize(client, [n_vocab - 1])  # the last id is in the vocabulary
    for model in ("llamacpp", "pytorch"):
        ids = tokenize(client, CHINESE, model=model)
        for bad in ([n_vocab], [*ids, 1_000_000], [5, 2**31 - 1]):
            r = client.post("/detokenize", json={"tokens": bad, "model": model})
            assert r.status_code == 400, (model, r.text)
            assert str(bad[-1]) in r.json()["error"]["message"], (model, r.text)
    assert detokenize(client, tokenize(client, CHINESE)) == CHINESE  # and the server answers on


def test_bad_token_lists_are_400s(client):
    for tokens, needle in [
        ([-1], "greater than or equal to 0"),
        ([2**31], "less than or equal to"),
        (["a"], "valid integer"),
        ([0] * (MAX_TOKEN_IDS + 1), f"at most {MAX_TOKEN_IDS} items"),
    ]:
        r = client.post("/detokenize", json={"tokens": tokens})
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text[:300]
    r = client.post("/tokenize", json={"content": "x" * 200_001})
    assert r.status_code == 400 and r.json()["error"]["param"] == "content"
    r = client.post("/tokenize", content=b'{"content": "\\ud800"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "content"
    assert client.get("/health").status_code == 200


def test_the_routes_need_the_api_key(server):
    bodies = {"/tokenize": {"content": "hi"}, "/detokenize": {"tokens": [1]}, "/apply-template": {"messages": MESSAGES}}
    for path in ROUTES:
        r = httpx.post(server.url + path, json=bodies[path], timeout=300)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert httpx.post(server.url + path, json=bodies[path], headers=AUTH, timeout=300).status_code == 200


def test_the_schema_declares_the_routes_and_their_errors(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ROUTES:
        assert {"200", "400", "401", "404", "413", "503"} <= set(paths[path]["post"]["responses"]), path
