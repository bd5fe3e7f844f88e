"""Fill-in-the-middle through a real server: Ollama's `suffix` on `/api/generate`, driven by the
official `ollama` client as an editor's autocomplete would send it. The model is a tiny random
HunYuan with Qwen2.5-Coder's FIM tokens: its GGUF (made by the product's converter) on llama.cpp and
its checkpoint on PyTorch beside it. The prompt layout itself: tests/services/test_infill.py."""

from __future__ import annotations

import httpx
import ollama
import pytest

PREFIX = "def 长城(x):\n    "
SUFFIX = "\n    return y\n"
GREEDY = {"temperature": 0, "num_predict": 12}
# What the prompt is in the model's FIM tokens (no BOS: this tokenizer adds none).
FIM_TEXT = f"<|fim_repo|>myproject\n<|file_sep|>filename\n<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"


@pytest.fixture(scope="module")
def server(start_server, coder_dir, coder_gguf):
    return start_server(
        {
            "HYCHAT_LLAMACPP_MODEL_PATH": str(coder_gguf),
            "HYCHAT_TORCH_ENABLED": "true",
            "HYCHAT_TORCH_MODEL_PATH": str(coder_dir),
            "HYCHAT_TORCH_DTYPE": "float32",
        }
    )


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def v1(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.mark.parametrize("model", ["coder-f32.gguf", "pytorch"])
def test_a_suffix_fills_the_middle_as_the_fim_prompt_written_out_would(client, v1, model):
    answer = client.generate(model=model, prompt=PREFIX, suffix=SUFFIX, options=GREEDY)
    body = {"model": model, "prompt": FIM_TEXT, "max_tokens": 12, "temperature": 0}
    completion = v1.post("/v1/completions", json=body).json()
    assert answer.response == completion["choices"][0]["text"] and answer.eval_count == 12
    assert answer.prompt_eval_count == completion["usage"]["prompt_tokens"]
    streamed = list(client.generate(model=model, prompt=PREFIX, suffix=SUFFIX, options=GREEDY, stream=True))
    assert "".join(chunk.response for chunk in streamed) == answer.response and streamed[-1].done
    # Raw or not: a suffix asks for the middle (Ollama would drop it from a raw prompt).
    assert (
        client.generate(model=model, prompt=PREFIX, suffix=SUFFIX, options=GREEDY, raw=True).response == answer.response
    )


def test_the_model_says_it_can_insert(client):
    assert "insert" in client.show("coder-f32.gguf").capabilities
    assert "insert" in client.show("pytorch").capabilities


def test_a_system_prompt_with_a_suffix_is_refused(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="coder-f32.gguf", prompt=PREFIX, suffix=SUFFIX, system="你是助手")
    assert raised.value.status_code == 400 and "system does not go with suffix" in raised.value.error
