"""The model library through a real server on llama.cpp: every GGUF in the model folders is served by
its name, loaded when a request names it, unloaded when idle (keep_alive), when the count or the
memory budget needs room (the least recently used idle model first), or when asked.

The library: the embedded SmolLM2 Q4_1 (the configured model), a Q8_0 of it the pipeline quantizes,
a tiny random HunYuan as an F32 GGUF with a LoRA the pipeline converts to a GGUF adapter (served as a
model of its own, "混元-微调", by the presets file), and a damaged copy of the Q8_0. The presets file
also turns the HunYuan's thinking off, and serves the Q8_0 file (a second name of it, in a folder the
library does not scan) as "smol-preset", with its own request defaults and a q8_0 KV cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.pipeline.hf_to_gguf import convert
from app.pipeline.lora_gguf import lora_to_gguf
from app.pipeline.quantize import quantize
from config.settings import Settings, embedded_model_path
from tests.conftest import REPO

API_KEY = "library-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
Q4 = Path(embedded_model_path()).name
Q8 = "SmolLM2-135M-Instruct.Q8_0.gguf"
BASE, FINETUNE, BROKEN, TORCH = "混元-base.f32.gguf", "混元-微调", "损坏.gguf", "混元-torch"
PRESET = "smol-preset"
QUESTION = [{"role": "user", "content": "请用一句话介绍长城。"}]
CACHE = Path(Settings().cache_dir)


@pytest.fixture(scope="module")
def library(tmp_path_factory, hunyuan_dir, lora_dir) -> Path:
    folder = tmp_path_factory.mktemp("library")
    quantize(Path(embedded_model_path()), folder / Q8, "q8_0", allow_requantize=True)
    convert(hunyuan_dir, folder / BASE, CACHE, outtype="f32", vocab_pre="hunyuan")
    lora_to_gguf(hunyuan_dir, lora_dir, folder / "lora.gguf", CACHE)
    damaged = (folder / Q8).read_bytes()
    (folder / BROKEN).write_bytes(damaged[: len(damaged) // 2])
    presets = f'["{FINETUNE}"]\npath = "lora.gguf"\nbase = "{BASE}"\naliases = ["finetune"]\n'
    presets += f'["{TORCH}"]\npath = "{hunyuan_dir}"\nkeep_alive = "1h"\n'  # a checkpoint, for PyTorch
    presets += f'["{BASE}"]\nthink = false\n'  # a section named like the file: its settings, same name
    # A hard link, not a symlink: the library resolves paths, and the Q8_0 file itself stays listed.
    (folder / "elsewhere").mkdir()
    os.link(folder / Q8, folder / "elsewhere" / f"{PRESET}.gguf")
    presets += f'["{PRESET}"]\npath = "elsewhere/{PRESET}.gguf"\nmax_tokens = 3\ntemperature = 0.0\n'
    presets += 'cache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
    (folder / "presets.toml").write_text(presets, encoding="utf-8")
    return folder


def env(library: Path, **settings: str) -> dict[str, str]:
    """The configured model stays the embedded one, in its own folder, which the library lists too."""
    folders = f"{library},{Path(embedded_model_path()).parent}"
    base = {"HYCHAT_API_KEY": API_KEY, "HYCHAT_MODEL_DIRS": folders,
            "HYCHAT_MODELS_PRESETS": str(library / "presets.toml")}  # fmt: skip
    return base | {f"HYCHAT_{k.upper()}": v for k, v in settings.items()}


def chat(url: str, model: str, **body) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": 12, "temperature": 0, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=300)


def answer(url: str, model: str) -> str:
    r = chat(url, model)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def models(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models", headers=HEADERS).json()["data"]}


def loaded(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(f"{url}/api/ps", headers=HEADERS).json()["models"]]


def rss_bytes(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=HEADERS).text
    return float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M).group(1))


def concurrently(ask, names: list[str]) -> list:
    """`ask(name)` for every name at the same moment, each on a thread of its own; the results in order."""
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(ask, names))


def until(condition, what: str, limit_s: float = 60):
    """Polls until `condition()` holds (a bound for a server that never gets there, not a timing)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(start_server, library):
    return start_server(env(library))


def test_every_model_is_listed_loaded_or_not_and_a_damaged_one_with_its_problem(server):
    listed = models(server.url)
    assert listed[Q4]["status"]["value"] == "loaded" and listed[Q4]["status"]["expires_at"] is None
    assert {listed[name]["status"]["value"] for name in (Q8, BASE, FINETUNE)} == {"unloaded"}
    assert listed[FINETUNE]["aliases"] == ["finetune"]
    assert listed[BROKEN]["status"]["value"] == "failed" and "truncated" in listed[BROKEN]["status"]["problem"]
    tags = [m["name"] for m in httpx.get(f"{server.url}/api/tags", headers=HEADERS).json()["models"]]
    assert tags[0] == Q4 and {Q8, BASE, FINETUNE} <= set(tags) and BROKEN not in tags
    # Asked for, the damaged file is a 400 naming it, and nothing else changes.
    r = chat(server.url, BROKEN)
    assert r.status_code == 400 and BROKEN in r.json()["error"]["message"]
    assert loaded(server.url) == [Q4] and answer(server.url, Q4)


def test_requests_naming_each_model_load_it_and_are_answered_by_it(server):
    solo = {name: answer(server.url, name) for name in (Q4, Q8)}
    names = [Q4, Q8] * 3
    for name, r in zip(names, concurrently(lambda name: chat(server.url, name), names), strict=True):
        assert r.status_code == 200 and r.json()["model"] == name
        assert r.json()["choices"][0]["message"]["content"] == solo[name]
    assert set(loaded(server.url)) == {Q4, Q8}
    ps = {m["name"]: m for m in httpx.get(f"{server.url}/api/ps", headers=HEADERS).json()["models"]}
    assert ps[Q8]["size"] > (Path(embedded_model_path()).parent / Q4).stat().st_size  # the file and its KV cache


def test_eight_simultaneous_requests_load_a_model_once(start_server, library, tmp_path):
    log = tmp_path / "server.log"
    server = start_server(env(library), log_path=log)
    results = concurrently(lambda name: chat(server.url, name), [BASE] * 8)
    assert [r.status_code for r in results] == [200] * 8
    assert {r.json()["model"] for r in results} == {BASE}
    assert log.read_text().count(f"llama.cpp loaded {library / BASE}") == 1


def test_an_adapter_is_a_model_of_its_own_and_never_leaks_into_its_base(server):
    solo = {name: answer(server.url, name) for name in (BASE, FINETUNE)}
    assert solo[BASE] != solo[FINETUNE]  # the LoRA's weights are not zero
    assert answer(server.url, "finetune") == solo[FINETUNE]  # its alias
    names = [BASE, FINETUNE] * 3  # interleaved, all at once
    assert concurrently(lambda name: answer(server.url, name), names) == [solo[name] for name in names]


def test_keep_alive_zero_unloads_and_the_memory_falls_back(start_server, library):
    server = start_server(env(library))
    before = rss_bytes(server.url)
    r = httpx.post(f"{server.url}/api/generate", headers=HEADERS, timeout=300,
                   json={"model": Q8, "prompt": "长城", "stream": False, "keep_alive": 0,
                         "options": {"num_predict": 4, "temperature": 0}})  # fmt: skip
    assert r.status_code == 200 and r.json()["model"] == Q8
    until(lambda: Q8 not in loaded(server.url), "keep_alive 0 unloads the model once its request ends")
    after = rss_bytes(server.url)
    assert after < before + 0.5 * (Path(library / Q8).stat().st_size)
    # An empty request loads (Ollama's preload), and with keep_alive 0 unloads at once.
    preload = httpx.post(f"{server.url}/api/generate", json={"model": Q8}, headers=HEADERS, timeout=300).json()
    assert preload["done_reason"] == "load" and Q8 in loaded(server.url)
    body = {"model": Q8, "keep_alive": 0}
    assert httpx.post(f"{server.url}/api/generate", json=body, headers=HEADERS).json()["done_reason"] == "unload"
    assert loaded(server.url) == [Q4]
    # Embeddings count as work: seconds of them with keep_alive 0 outlast the expiry checks (one a
    # second), which must not unload the model under them; it goes once they are done.
    inputs = [f"第{i}段：长城是中国古代的军事防御工程，东起山海关，西至嘉峪关。" * 4 for i in range(192)]
    body = {"model": Q8, "input": inputs, "keep_alive": 0}
    with ThreadPoolExecutor(1) as pool:
        embedding = pool.submit(httpx.post, f"{server.url}/api/embed", json=body, headers=HEADERS, timeout=300)
        until(lambda: Q8 in loaded(server.url), "the embedding request loads the model")
        seen = []
        while not embedding.done():
            seen.append(Q8 in loaded(server.url))
            time.sleep(0.1)
        r = embedding.result()
    assert r.status_code == 200, r.text
    assert len(r.json()["embeddings"]) == len(inputs) and len(seen) > 10
    assert all(seen[:-2])  # loaded throughout (the last look may come as the answer is sent)
    until(lambda: Q8 not in loaded(server.url), "keep_alive 0 unloads the model once the embeddings are done")


def test_one_model_at_a_time_the_idle_one_goes_and_a_busy_one_stays(start_server, library):
    server = start_server(env(library, max_loaded_models="1"))
    assert answer(server.url, Q8) and loaded(server.url) == [Q8]
    assert answer(server.url, Q4) and loaded(server.url) == [Q4]
    # A long answer keeps Q4 busy: Q8 cannot take its place meanwhile.
    body = {"model": Q4, "messages": QUESTION, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=300) as r:
        lines = r.iter_lines()  # held: a dropped iterator would close the stream
        next(lines)
        refused = chat(server.url, Q8)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "answering requests" in refused.json()["error"]["message"]
    until(lambda: chat(server.url, Q8).status_code == 200, "Q8 loads once Q4 is idle")
    assert loaded(server.url) == [Q8]


def test_a_budget_too_small_is_a_clear_503_and_the_server_stays_up(start_server, library):
    server = start_server(env(library, models_memory_mib="200"))
    r = chat(server.url, Q8)
    assert r.status_code == 503 and "HYCHAT_MODELS_MEMORY_MIB" in r.json()["error"]["message"]
    assert re.search(r"needs about \d+ MiB", r.json()["error"]["message"])
    assert loaded(server.url) == [Q4] and answer(server.url, Q4)


def test_a_checkpoint_folder_loads_on_demand_on_pytorch(server):
    assert models(server.url)[TORCH]["backend"] == "pytorch"
    r = chat(server.url, TORCH, max_tokens=4)
    assert r.status_code == 200 and r.json()["model"] == TORCH
    held = models(server.url)[TORCH]
    assert held["backend"] == "pytorch" and held["status"]["value"] == "loaded"
    assert held["status"]["expires_at"] > time.time() + 3000  # its keep_alive of 1h


def test_load_and_unload_by_name_need_the_key(server):
    body = {"model": "finetune"}
    assert httpx.post(f"{server.url}/models/load", json=body).status_code == 401
    r = httpx.post(f"{server.url}/models/load", json=body, headers=HEADERS, timeout=300)
    assert r.status_code == 200 and r.json()["model"] == FINETUNE and FINETUNE in loaded(server.url)
    r = httpx.post(f"{server.url}/models/unload", json=body, headers=HEADERS, timeout=300)
    assert r.json() == {"success": True, "unloaded": True} and FINETUNE not in loaded(server.url)
    assert models(server.url)[FINETUNE]["status"]["value"] == "unloaded"
    missing = httpx.post(f"{server.url}/models/load", json={"model": "没有"}, headers=HEADERS)
    assert missing.status_code == 404


def test_the_library_leaves_the_configured_model_as_it_was(server):
    """No model named: the configured one answers, as before the library."""
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=HEADERS, timeout=300,
                   json={"messages": QUESTION, "max_tokens": 4})  # fmt: skip
    assert r.status_code == 200 and r.json()["model"] == Q4


def test_the_command_line_lists_loads_and_unloads(server):
    def hychat(*args: str) -> str:
        command = [sys.executable, "-m", "app", *args, "--url", server.url, "--api-key", API_KEY]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = hychat("models")
    assert f"{Q4}  llamacpp  loaded" in listed and f"{FINETUNE}  llamacpp  unloaded  (also finetune)" in listed
    assert re.search(rf"{BROKEN}  llamacpp  failed: .*truncated", listed)
    assert "is loaded" in hychat("load", "finetune", "--keep-alive", "10m")
    ps = hychat("ps")
    assert re.search(rf"^{Q4} +\d+ MiB  unloaded or evicted$", ps, re.M)
    assert re.search(rf"^{FINETUNE} +\d+ MiB  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", ps, re.M)
    assert hychat("unload", FINETUNE).strip() == f"{FINETUNE} is unloaded"
    assert FINETUNE not in hychat("ps")


def test_a_models_presets_set_its_request_defaults_and_its_kv_cache_type(server):
    """smol-preset: max_tokens 3 and temperature 0 for the requests that set none, on every dialect."""
    body = {"model": PRESET, "messages": QUESTION}
    first = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=300)
    assert first.status_code == 200, first.text
    choice = first.json()["choices"][0]
    assert (first.json()["usage"]["completion_tokens"], choice["finish_reason"]) == (3, "length")
    text = choice["message"]["content"]
    assert text  # answered with its q8_0 K and V
    longer = httpx.post(f"{server.url}/v1/chat/completions", json=body | {"max_tokens": 5}, headers=HEADERS,
                        timeout=300).json()  # fmt: skip
    assert longer["usage"]["completion_tokens"] == 5 and longer["choices"][0]["message"]["content"].startswith(text)
    ollama = {**body, "stream": False}
    r = httpx.post(f"{server.url}/api/chat", json=ollama, headers=HEADERS, timeout=300).json()
    assert (r["eval_count"], r["done_reason"], r["message"]["content"]) == (3, "length", text)  # greedy: the same
    r = httpx.post(f"{server.url}/api/chat", json=ollama | {"options": {"num_predict": 5}}, headers=HEADERS,
                   timeout=300).json()  # fmt: skip
    assert (r["eval_count"], r["done_reason"]) == (5, "length")
    # What a request gets unset, as llama-server's /props and Ollama's /api/show tell it.
    props = httpx.get(f"{server.url}/props", params={"model": PRESET}, headers=HEADERS).json()
    assert {k: props["default_generation_settings"]["params"][k] for k in ("n_predict", "temperature")} == {
        "n_predict": 3,
        "temperature": 0.0,
    }
    show = httpx.post(f"{server.url}/api/show", json={"model": PRESET}, headers=HEADERS).json()
    assert "temperature                    0\n" in show["parameters"]
    # The configured model keeps the server's defaults.
    plain = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": QUESTION}, headers=HEADERS, timeout=300)
    assert plain.json()["usage"]["completion_tokens"] > 3
    # The same file with f16 K and V is estimated larger by what q8_0 saves: a K and a V of 30 layers x
    # 3 heads x 64 values for every cell, 2 bytes a value in f16, 34 bytes per 32 in q8_0.
    assert answer(server.url, Q8)
    ps = {m["name"]: m["size"] for m in httpx.get(f"{server.url}/api/ps", headers=HEADERS).json()["models"]}
    cells = props["default_generation_settings"]["n_ctx"] * props["total_slots"]
    assert ps[Q8] - ps[PRESET] == cells * 2 * 30 * 3 * 64 * (2 * 32 - 34) // 32


def test_a_models_presets_set_its_thinking_default_and_its_adapters(server):
    """BASE's preset turns thinking off: its Hunyuan-7B template then starts the user turn with /no_think,
    as HYCHAT_THINK=false would; the adapter on it (no preset of its own for it) inherits it."""

    def prompt(model: str, **body) -> str:
        r = httpx.post(f"{server.url}/apply-template", json={"model": model, "messages": QUESTION, **body},
                       headers=HEADERS, timeout=300)  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()["prompt"]

    off = prompt(BASE)
    assert "/no_think " in off and off == prompt(BASE, think=False) == prompt(FINETUNE)
    assert "/no_think" not in prompt(BASE, think=True) and "/no_think" not in prompt(FINETUNE, think=True)
