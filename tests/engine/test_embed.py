"""An embedding model (a tiny random BERT, converted by the product's own pipeline) served for
embeddings alone: llama.cpp's vectors equal transformers' mean-pooled ones, chats are refused with
a clear error instead of reaching a model that cannot write, and a server answers the openai SDK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest

from app.errors import InvalidParameterError
from app.services.llamacpp_service import LlamaCppBackend
from config.settings import Settings
from tests.torch_models import build_tiny_bert

TEXTS = ["你好，我是混元。", "Hello world! The quick brown fox.", "长城是中国古代的军事防御工程。"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[Path, Path]:
    from app.pipeline.hf_to_gguf import convert

    root = tmp_path_factory.mktemp("bert")
    hf_dir = build_tiny_bert(root / "hf")
    # Its vocabulary is made here, so the converter cannot know the pre-tokenizer by its hash.
    convert(hf_dir, root / "bert.gguf", Path(Settings().cache_dir), "f32", vocab_pre="default")
    return hf_dir, root / "bert.gguf"


def transformers_embeddings(hf_dir: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' mean pooling over the last hidden states, normalised."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.BertModel.from_pretrained(hf_dir).eval()
    rows = []
    for text in texts:
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]  # [T, hidden]
        mean = hidden.mean(0).numpy()
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def test_a_bert_gguf_embeds_as_transformers_does_and_refuses_chats(bert):
    hf_dir, gguf = bert
    backend = LlamaCppBackend()
    backend.load_model(model_path=str(gguf), n_ctx=2048)
    info = backend.info()
    assert info["embeddings_only"] and info["n_ctx"] == 256  # its trained positions, not the 2048 asked
    got = backend.embed(TEXTS)
    assert np.allclose(got.vectors, transformers_embeddings(hf_dir, TEXTS), atol=1e-4)
    assert got.prompt_tokens == sum(len(backend.tokenize(t)) for t in TEXTS)
    for call in (lambda: backend.generate("你好"), lambda: backend.chat([{"role": "user", "content": "你好"}])):
        with pytest.raises(InvalidParameterError, match="is an embedding model"):
            call()
    assert np.allclose(backend.embed(TEXTS[:1]).vectors[0], got.vectors[0], atol=1e-6)  # still serving


def test_a_server_on_an_embedding_model_answers_embeddings_and_refuses_chats(bert, start_server):
    hf_dir, gguf = bert
    server = start_server({"HYCHAT_LLAMACPP_MODEL_PATH": str(gguf)})
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    response = client.embeddings.create(model="bert.gguf", input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in response.data])
    assert np.allclose(got, transformers_embeddings(hf_dir, TEXTS), atol=1e-4)
    with pytest.raises(openai.BadRequestError, match="is an embedding model") as raised:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "你好"}])
    assert raised.value.body["param"] == "model"
