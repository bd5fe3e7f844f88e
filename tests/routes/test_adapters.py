"""LoRA adapters applied per request on one base model, through a real server on llama.cpp: each
GGUF adapter in the library is a model name of its own (vLLM's way), and a request may name the
base's adapters and scales itself (llama-server's `lora: [{"id", "scale"}]`). The base loads once;
requests of different adapters decode in the one engine, taking turns, and none sees another's.

The library: a tiny random HunYuan as an F32 GGUF (the configured model) and two LoRAs of it that the
pipeline converts to GGUF adapters, "微调-甲" and "微调-乙"."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.pipeline.hf_to_gguf import convert
from app.pipeline.lora_gguf import lora_to_gguf
from config.settings import Settings
from tests.torch_models import build_lora

BASE, A, B = "混元-base.f32.gguf", "微调-甲", "微调-乙"
QUESTION = [{"role": "user", "content": "请用一句话介绍长城。"}]
PROMPT = "长城是"
CACHE = Path(Settings().cache_dir)


@pytest.fixture(scope="module")
def library(tmp_path_factory, hunyuan_dir, lora_dir) -> Path:
    folder = tmp_path_factory.mktemp("adapters")
    convert(hunyuan_dir, folder / BASE, CACHE, outtype="f32", vocab_pre="hunyuan")
    lora_to_gguf(hunyuan_dir, lora_dir, folder / "a.gguf", CACHE)
    other = build_lora(hunyuan_dir, tmp_path_factory.mktemp("lora-b"), seed=2)
    lora_to_gguf(hunyuan_dir, other, folder / "b.gguf", CACHE)
    presets = f'["{A}"]\npath = "a.gguf"\nbase = "{BASE}"\n\n["{B}"]\npath = "b.gguf"\nbase = "{BASE}"\n'
    (folder / "presets.toml").write_text(presets, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def server(start_server, library, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    env = {"HYCHAT_LLAMACPP_MODEL_PATH": str(library / BASE), "HYCHAT_MODEL_DIRS": str(library),
           "HYCHAT_MODELS_PRESETS": str(library / "presets.toml"), "HYCHAT_PARALLEL": "4"}  # fmt: skip
    server = start_server(env, log_path=log)
    server.log = log
    return server


def chat(url: str, model: str, **body) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": 16, "temperature": 0, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def answer(url: str, model: str, **body) -> str:
    r = chat(url, model, **body)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == model  # the answering model is named: the adapter's name, not its base's
    return r.json()["choices"][0]["message"]["content"]


def completion(url: str, **body) -> str:
    r = httpx.post(f"{url}/completion", json={"prompt": PROMPT, "n_predict": 16, "temperature": 0, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["content"]


def ids(url: str) -> dict[str, int]:
    """Each adapter's id, by its file's name."""
    return {Path(a["path"]).name: a["id"] for a in httpx.get(f"{url}/lora-adapters").json()}


def test_answers_with_adapter_a_b_and_none_interleaved_and_concurrent_equal_their_solo_runs(server):
    solo = {name: answer(server.url, name) for name in (BASE, A, B)}
    assert len(set(solo.values())) == 3  # the adapters change the answer, each its own way
    names = [A, BASE, B, B, A, BASE, A, B, BASE]  # all at once: the engine holds 4, the others wait
    with ThreadPoolExecutor(len(names)) as pool:
        assert list(pool.map(lambda name: answer(server.url, name), names)) == [solo[n] for n in names]
    assert server.log.read_text().count("llama.cpp loaded ") == 1  # the base once; the adapters on it
    ps = {m["name"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]}
    assert ps == {BASE, A, B}
    listed = {m["id"]: m["status"]["value"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert listed == {BASE: "loaded", A: "loaded", B: "loaded"}


def test_a_request_names_adapters_and_scales_itself_as_on_llama_server(server):
    adapter = ids(server.url)
    assert set(adapter) == {"a.gguf", "b.gguf"}
    assert {a["scale"] for a in httpx.get(f"{server.url}/lora-adapters").json()} == {0.0}  # applied when named
    a = [{"id": adapter["a.gguf"], "scale": 1.0}]
    # The chat route takes llama-server's `lora` too: the base with A equals the model name A.
    assert answer(server.url, BASE, lora=a) == answer(server.url, A)
    # A scale of 0 is no adapter; an adapter model's request may name none at all.
    assert answer(server.url, A, lora=[{"id": adapter["a.gguf"], "scale": 0}]) == answer(server.url, BASE)
    with_a, half = completion(server.url, lora=a), completion(server.url, lora=[{**a[0], "scale": 0.5}])
    assert with_a != completion(server.url) and half not in (with_a, completion(server.url))
    r = httpx.post(f"{server.url}/completion", json={"prompt": PROMPT, "lora": [{"id": 7, "scale": 1}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "has no adapter 7" in r.json()["error"]["message"]
    assert completion(server.url, n_predict=4)  # and the server goes on


def test_post_lora_adapters_sets_the_scales_of_requests_that_name_none(server):
    adapter = ids(server.url)
    base = completion(server.url)
    with_b = completion(server.url, lora=[{"id": adapter["b.gguf"], "scale": 1.0}])
    r = httpx.post(f"{server.url}/lora-adapters", json=[{"id": adapter["b.gguf"], "scale": 1.0}])
    assert r.status_code == 200 and r.json() == {"success": True}
    try:
        assert completion(server.url) == with_b
        assert completion(server.url, lora=[{"id": adapter["b.gguf"], "scale": 0}]) == base
    finally:
        httpx.post(f"{server.url}/lora-adapters", json=[])
    assert completion(server.url) == base
