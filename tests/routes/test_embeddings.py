"""`POST /v1/embeddings` through the real `openai` SDK, against a real server on the embedded SmolLM2
GGUF: the vectors are llama.cpp's own (checked against llama-cpp-python's embedding path), every
input shape gives the same vector for the same text, and an embedding never waits for a chat."""

from __future__ import annotations

import json

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

TEXTS = ["你好，世界", "The cat sat on the mat.", "长城是中国古代的军事防御工程。"]


@pytest.fixture(scope="module")
def server(start_server):
    return start_server({"HYCHAT_LLAMACPP_N_CTX": "256", "HYCHAT_PARALLEL": "2"})


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def reference(model_path):
    """llama-cpp-python's own embedding path on the same file: mean pooling, normalised, flash
    attention on as the server loads models (without it the vectors differ by about 1e-2)."""
    mean = llama_cpp.LLAMA_POOLING_TYPE_MEAN
    llm = llama_cpp.Llama(model_path=model_path, embedding=True, pooling_type=mean, n_ctx=256, flash_attn=True,
                          verbose=False)  # fmt: skip
    return lambda text: np.array(llm.embed(text, normalize=True))


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])


def test_embeddings_are_llama_cpps_own_and_normalised(client, reference):
    response = client.embeddings.create(model="default", input=TEXTS, encoding_format="float")
    got = vectors(response)
    assert got.shape == (3, 576) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    for text, vector in zip(TEXTS, got, strict=True):
        assert np.allclose(vector, reference(text), atol=1e-5), text
    assert response.model == "SmolLM2-135M-Instruct.Q4_1.gguf" and response.usage.prompt_tokens > 10
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_every_input_shape_and_encoding_gives_the_same_vectors(client, server):
    whole = vectors(client.embeddings.create(model="llamacpp", input=TEXTS, encoding_format="float"))
    # The SDK asks for base64 by default and decodes it itself.
    assert np.allclose(vectors(client.embeddings.create(model="default", input=TEXTS)), whole, atol=1e-6)
    alone = vectors(client.embeddings.create(model="default", input=TEXTS[1], encoding_format="float"))
    assert np.allclose(alone[0], whole[1], atol=1e-5)  # batched with others or alone: the same
    ids = httpx.post(f"{server.url}/tokenize", json={"content": TEXTS[2], "add_special": True}).json()["tokens"]
    by_ids = vectors(client.embeddings.create(model="default", input=[ids, ids], encoding_format="float"))
    assert np.allclose(by_ids, whole[[2, 2]], atol=1e-5)
    single = vectors(client.embeddings.create(model="default", input=ids, encoding_format="float"))
    assert np.allclose(single[0], whole[2], atol=1e-5)


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"input": [""]}, "input"),
        ({"input": []}, "input"),
        ({"input": ["x"] * 513}, "input"),
        ({"input": "你好" * 400}, "input"),  # more tokens than the 256 of the context
        ({"input": [[1, 2**31 - 2]]}, "input"),  # outside the vocabulary
        ({"input": "你好", "dimensions": 64}, "dimensions"),
        ({"input": "你好", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_inputs_are_refused_and_nothing_else_changes(client, server, fields, param):
    before = client.embeddings.create(model="default", input="你好", encoding_format="float").data[0].embedding
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="default", **fields)
    error = raised.value.body
    too_long = error.get("code") == "context_length_exceeded"  # then llama-server's type
    assert error["type"] == ("exceed_context_size_error" if too_long else "invalid_request_error"), error
    assert error["param"] == param, error
    after = client.embeddings.create(model="default", input="你好", encoding_format="float").data[0].embedding
    assert after == before


def test_the_models_own_dimensions_are_accepted_and_an_unknown_model_is_a_404(client):
    assert len(client.embeddings.create(model="default", input="你好", dimensions=576).data[0].embedding) == 576
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="你好")


def test_an_embedding_does_not_wait_for_a_running_chat(client, server):
    """A chat forced to write 300 tokens is streaming; an embedding asked meanwhile is answered while
    that chat still has tokens to come (it runs on a context and thread of its own)."""
    body = {"model": "default", "messages": [{"role": "user", "content": "写"}], "max_tokens": 300,
            "temperature": 0, "grammar": 'root ::= "好"{300}', "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=300) as r:
        lines = r.iter_lines()
        assert any('"好"' in line for line in lines)  # generating
        client.embeddings.create(model="default", input=TEXTS, encoding_format="float")
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    pieces = [c["choices"][0]["delta"].get("content") for c in rest if c["choices"]]
    # Most of the answer came after the embedding (tokens that piled up meanwhile come joined in a chunk).
    assert sum(p.count("好") for p in pieces if p) > 50
    assert rest[-1]["choices"][0]["finish_reason"] == "length"
