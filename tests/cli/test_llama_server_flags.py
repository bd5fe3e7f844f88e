"""`hychat serve` with llama-server's flags: a real server (`python -m app serve`) on the embedded
SmolLM2, its answers read over HTTP; built-in templates held to llama.cpp's own
`llama_chat_apply_template`, called here directly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from app.chat.template import render
from app.cli.main import serve, serve_settings
from app.modelfiles.gguf import read_gguf
from tests.conftest import REPO, free_port
from tests.services.test_chat_templates import CHAT, FILE_TEMPLATE, llama_cpp_renders

QUESTION = [{"role": "user", "content": "用一句话介绍长城。"}]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port()), *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def parsed(*args: str):
    """The settings `hychat serve ARGS` would run with, parsed by the command itself."""
    with serve.make_context("serve", list(args)) as context:
        return serve_settings(**context.params)


def applied(server, messages=CHAT) -> str:
    r = httpx.post(f"{server.url}/apply-template", json={"messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def test_help_shows_llama_servers_names_beside_hychats():
    result = subprocess.run([sys.executable, "-m", "app", "serve", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0
    shown = ("-np, --parallel", "-a, --alias", "--chat-template TEXT", "--chat-template-file", "--jinja / --no-jinja",
             "--reasoning-format", "-n, --n-predict", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
             "-s, --seed", "-m, --model", "--n-ctx", "-c, --ctx-size", "-t, --threads",
             "-ngl, --n-gpu-layers, --gpu-layers", "--host", "--port", "--api-key", "-rea, --reasoning", "--tags",
             "-v, --verbose", "--slots / --no-slots", "--spec-type", "--spec-ngram-size-n, --spec-ngram-simple-size-n",
             "--spec-draft-n-max, --draft-max, --draft-n, --draft", "--spec-draft-n-min, --draft-min, --draft-n-min",
             "--spec-ngram-min-hits, --spec-ngram-simple-min-hits",
             "-md, --spec-draft-model, --model-draft", "--spec-draft-p-min, --draft-p-min")  # fmt: skip
    assert [names for names in shown if names not in result.stdout] == []


def test_alias_names_the_model_everywhere_and_requests_may_use_any(start_server, model_path):
    # the first in code-point order names it (大 < 小), as llama-server's std::set of aliases does
    server = start_server({}, "-m", model_path, "--alias", "小助手, 大模型")
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [(m["id"], m["aliases"]) for m in models] == [("大模型", ["大模型", "小助手"])]
    tags = httpx.get(f"{server.url}/api/tags").json()["models"]
    assert [t["name"] for t in tags] == ["大模型"]
    for name in ("小助手", "大模型"):
        body = {"model": name, "messages": QUESTION, "max_tokens": 4, "temperature": 0}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "大模型"
    body = {"model": "小助手", "messages": QUESTION, "stream": False, "options": {"num_predict": 4}}
    assert httpx.post(f"{server.url}/api/chat", json=body, timeout=120).json()["model"] == "大模型"
    body = {"model": "gpt-3.5-turbo", "messages": QUESTION, "max_tokens": 4}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code == 404


def test_a_template_file_replaces_the_models_template(start_server, tmp_path):
    path = tmp_path / "对话模板.jinja"
    path.write_text(FILE_TEMPLATE, encoding="utf-8")
    server = start_server({}, "--chat-template-file", str(path))
    assert applied(server) == render(FILE_TEMPLATE, CHAT, special_tokens={})
    body = {"messages": QUESTION, "max_tokens": 3, "temperature": 0}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code == 200


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_a_builtin_template_renders_what_llama_cpp_renders(start_server, name):
    server = start_server({}, "--chat-template", name)
    assert applied(server) == llama_cpp_renders(name, CHAT)
    info = httpx.get(f"{server.url}/api/info").json()["backends"]["llamacpp"]
    assert info["chat_template_builtin"] == name


def test_no_jinja_renders_the_models_template_through_llama_cpp(start_server, model_path):
    server = start_server({}, "--no-jinja")
    own = read_gguf(model_path).metadata["tokenizer.chat_template"]
    assert applied(server) == llama_cpp_renders(own, CHAT)  # SmolLM2's is ChatML to llama.cpp


def test_context_slots_and_threads(start_server):
    server = start_server({}, "-c", "1024", "-np", "2", "-t", "2")
    info = httpx.get(f"{server.url}/api/info").json()["backends"]["llamacpp"]
    # llama-server's -c is the context of all slots together: 512 tokens for each of 2 requests.
    assert (info["n_ctx"], info["n_ctx_total"], info["parallel"], info["n_threads"]) == (512, 1024, 2, 2)
    server = start_server({}, "--n-ctx", "1024", "--parallel", "2", "--threads", "2")
    info = httpx.get(f"{server.url}/api/info").json()["backends"]["llamacpp"]
    assert (info["n_ctx"], info["n_ctx_total"], info["parallel"], info["n_threads"]) == (1024, 2048, 2, 2)


def test_a_quantized_kv_cache_takes_its_share_and_answers(start_server, tmp_path):
    """SmolLM2-135M's K and V: 11520 values a token; q8_0 stores 32 of them in 34 bytes, f16 in 64."""
    log = tmp_path / "server.log"
    server = start_server({}, "-c", "4096", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0", log_path=log)
    info = httpx.get(f"{server.url}/api/info").json()["backends"]["llamacpp"]
    assert (info["cache_type_k"], info["cache_type_v"]) == ("q8_0", "q8_0")
    per_slot = 2048 * 11520 * 34 // 32
    assert (info["kv_cache_bytes_per_slot"], info["kv_cache_bytes"]) == (per_slot, 2 * per_slot)
    assert "KV cache q8_0/q8_0 48 MiB, 23.9 MiB per slot" in log.read_text()  # the start-up log says it too
    body = {"messages": [{"role": "user", "content": "请用一句话介绍长城。"}], "max_tokens": 8, "temperature": 0}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0


def test_several_hosts_are_all_bound(start_server):
    other = "::1" if ipv6_loopback() else "127.0.0.2"
    server = start_server({}, "--host", "127.0.0.1", "--host", other)
    for host in ("127.0.0.1", f"[{other}]" if ":" in other else other):
        assert httpx.get(f"http://{host}:{server.port}/health", timeout=30).status_code == 200
    server = start_server({}, "--host", f"127.0.0.1,{other}")
    assert httpx.get(f"http://{'[::1]' if ':' in other else other}:{server.port}/health").status_code == 200


def test_sampling_flags_become_the_defaults_of_requests():
    settings = parsed("--temp", "0", "--seed", "7", "-n", "5", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.1",
                      "--repeat-penalty", "1.1")  # fmt: skip
    assert settings.sampling_defaults() == {
        "max_new_tokens": 5, "temperature": 0.0, "seed": 7, "top_k": 20, "top_p": 0.9, "min_p": 0.1,
        "repetition_penalty": 1.1,
    }  # fmt: skip
    assert parsed().sampling_defaults() == {}
    assert parsed("--n-predict", "-1", "--seed", "-1").sampling_defaults() == {}  # llama-server's "unset"


def test_the_sampling_defaults_answer_every_dialect(start_server):
    """`-n 5 --temp 0`: a request that sets neither gets 5 greedy tokens, whatever its dialect; one that
    sets them keeps its own."""
    server = start_server({}, "-n", "5", "--temp", "0")
    with httpx.Client(base_url=server.url, timeout=300) as http:
        chat = http.post("/v1/chat/completions", json={"messages": QUESTION}).json()
        assert chat["usage"]["completion_tokens"] == 5
        assert http.post("/v1/chat/completions", json={"messages": QUESTION}).json()["choices"] == chat["choices"]
        assert http.post("/v1/completions", json={"prompt": "长城"}).json()["usage"]["completion_tokens"] == 5
        assert http.post("/api/chat", json={"messages": QUESTION}).json()["usage"]["completion_tokens"] == 5
        ollama = http.post("/api/chat", json={"model": "default", "messages": QUESTION, "stream": False}).json()
        assert ollama["eval_count"] == 5 and ollama["message"]["content"] == chat["choices"][0]["message"]["content"]
        response = http.post("/v1/responses", json={"input": "用一句话介绍长城。"}).json()
        assert response["usage"]["output_tokens"] == 5
        own = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 8}).json()
        assert own["usage"]["completion_tokens"] == 8 and own["choices"][0]["message"]["content"].startswith(
            chat["choices"][0]["message"]["content"]
        )


def test_server_flags_become_settings():
    settings = parsed("--host", "127.0.0.1", "--host", "::1,127.0.0.2", "--port", "9001", "--api-key", "秘密",
                      "-m", "模型.gguf", "-ngl", "-1", "--alias", "a,b", "--reasoning-format", "deepseek",
                      "--no-jinja", "--chat-template", "llama3")  # fmt: skip
    assert settings.hosts() == ["127.0.0.1", "::1", "127.0.0.2"]
    assert (settings.port, settings.api_key, settings.llamacpp_model_path) == (9001, "秘密", "模型.gguf")
    assert (settings.llamacpp_n_gpu_layers, settings.alias, settings.reasoning_format) == (-1, ["a", "b"], "auto")
    assert (settings.jinja, settings.chat_template) == (False, "llama3")
    assert [parsed("--reasoning", v).think for v in ("on", "off", "auto")] == [True, False, None]
    assert (parsed("--tags", "chat,小").model_tags, parsed("--no-slots").endpoint_slots) == (["chat", "小"], False)
    assert (parsed("-v").log_level, parsed().log_level) == ("debug", "info")
    assert parsed("--gpu-layers", "3").llamacpp_n_gpu_layers == 3
    assert parsed("--jinja").jinja is True and parsed().jinja is True
    quantized = parsed("-ctk", "q8_0", "-ctv", "q4_0")
    assert (quantized.cache_type_k, quantized.cache_type_v, parsed().cache_type_k) == ("q8_0", "q4_0", "f16")
    ray = parsed("--ray", "auto", "--replicas", "3", "--max-replicas", "5", "--ray-routing", "balanced")
    assert (ray.ray_address, ray.ray_replicas, ray.ray_max_replicas, ray.ray_routing) == ("auto", 3, 5, "balanced")
    assert (parsed().ray_address, parsed().ray_routing) == (None, "prefix")  # one process unless asked


def test_speculative_decoding_flags_by_hychats_names_and_llama_servers():
    default = {"type": "ngram", "n_max": 64, "n_min": 0, "ngram_size_n": 3, "ngram_min_hits": 1, "p_min": 0.0}
    assert parsed().speculation() == default and parsed().spec_draft_model is None
    ours = parsed("--spec-type", "none", "--spec-draft-n-max", "8", "--spec-draft-n-min", "2", "--spec-ngram-size-n",
                  "4", "--spec-ngram-min-hits", "2", "--spec-draft-p-min", "0.5")  # fmt: skip
    assert ours.speculation() == {
        "type": "none", "n_max": 8, "n_min": 2, "ngram_size_n": 4, "ngram_min_hits": 2, "p_min": 0.5
    }  # fmt: skip
    assert parsed("--draft-p-min", "0.25").spec_draft_p_min == 0.25
    for n_max in ("--draft-max", "--draft-n", "--draft"):
        assert parsed(n_max, "5").spec_draft_n_max == 5
    for n_min in ("--draft-min", "--draft-n-min"):
        assert parsed(n_min, "1").spec_draft_n_min == 1
    theirs = parsed("--spec-ngram-simple-size-n", "6", "--spec-ngram-simple-min-hits", "3")
    assert (theirs.spec_ngram_size_n, theirs.spec_ngram_min_hits) == (6, 3)
    for name in ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache"):  # all hychat's ngram
        assert parsed("--spec-type", name).spec_type == "ngram"
    for name in ("draft", "draft-simple"):  # llama-server's draft-simple is hychat's draft
        assert parsed("--spec-type", name).spec_type == "draft"


def test_a_draft_model_flag_turns_draft_speculation_on_as_in_llama_server(monkeypatch):
    monkeypatch.delenv("HYCHAT_SPEC_TYPE", raising=False)
    for flag in ("--spec-draft-model", "-md", "--model-draft"):
        settings = parsed(flag, "小模型.gguf")
        assert (settings.spec_draft_model, settings.spec_type) == ("小模型.gguf", "draft")
        assert settings.llamacpp_config()["spec_draft_model"] == "小模型.gguf"
    assert parsed("-md", "d.gguf", "--spec-type", "ngram-simple").spec_type == "ngram"  # a type given wins
    assert parsed("--spec-type", "none", "-md", "d.gguf").spec_type == "none"


def test_the_same_settings_come_from_the_environment(monkeypatch):
    for name, value in {"TEMPERATURE": "0", "SEED": "7", "MAX_TOKENS": "5"}.items():
        monkeypatch.setenv(f"HYCHAT_DEFAULT_{name}", value)
    monkeypatch.setenv("HYCHAT_ALIAS", "小助手")
    settings = parsed()
    assert settings.sampling_defaults() == {"max_new_tokens": 5, "temperature": 0.0, "seed": 7}
    assert settings.alias == ["小助手"]
    assert parsed("--temp", "0.5").sampling_defaults()["temperature"] == 0.5  # the flag wins


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-np", "0"], "Invalid value for '--parallel' / '-np': 0: Input should be greater than or equal to 1"),
        (["--temp", "热"], "Invalid value for '--temp': '热' is not a valid float."),
        (["--top-p", "2"], "Invalid value for '--top-p': 2.0: Input should be less than or equal to 1"),
        (["--seed", "-2"], "Invalid value for '--seed' / '-s': -2: Input should be greater than or equal to 0"),
        (["-c", "20"], "Invalid value for '--ctx-size' / '-c': 20 (20 / 4 slots = 5 tokens for each request)"),
        (["-c", "1024", "--n-ctx", "512"], "give either --n-ctx (each request's) or -c / --ctx-size (all together)"),
        (["--reasoning-format", "deepseek-legacy"], "Invalid value for '--reasoning-format': 'deepseek-legacy'"),
        (["--host", ","], "Invalid value for '--host': ',': give at least one address"),
        (["--flash-attn"], "No such option '--flash-attn'"),
        (["-ctk", "q3"], "Invalid value for '--cache-type-k' / '-ctk': 'q3' is not one of"),
        (
            ["--draft-max", "300"],
            "Invalid value for '--spec-draft-n-max' / '--draft-max' / '--draft-n' / '--draft': "
            "300: Input should be less than or equal to 256",
        ),
        (["--spec-type", "draft-mtp"], "Invalid value for '--spec-type': 'draft-mtp' is not one of"),
        (["--ray", "local", "--replicas", "0"], "Invalid value for '--replicas': 0: Input should be greater than"),
        (
            ["--draft-p-min", "2"],
            "Invalid value for '--spec-draft-p-min' / '--draft-p-min': 2.0: Input should be less than or equal to 1",
        ),
    ],
)
def test_a_bad_flag_is_a_usage_error_naming_it(args, message):
    result = run_serve(*args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_template_or_conflict_is_one_line_before_any_model_loads(tmp_path):
    latin1 = tmp_path / "latin1.jinja"
    latin1.write_bytes("{{ 'café' }}".encode("latin-1"))
    syntax = tmp_path / "syntax.jinja"
    syntax.write_text("{% for m in messages %}", encoding="utf-8")
    missing = tmp_path / "无.jinja"
    cases = [
        (["--chat-template-file", str(missing)], f"Error: {missing}: chat template file not found"),
        (["--chat-template-file", str(latin1)], f"Error: {latin1}: not a UTF-8 text file"),
        (["--chat-template-file", str(syntax)], f"Error: {syntax}: the chat template is not Jinja (line 1)"),
        (["--chat-template", "llama-3"], "Error: chat_template (--chat-template): 'llama-3' is neither one of"),
        (["--no-jinja", "--chat-template", "{{ x }}"], "llama.cpp has no built-in chat template like '{{ x }}'"),
        (["--chat-template", "chatml", "--chat-template-file", str(syntax)], "Error: invalid settings: give either"),
        (["-n", "5000"], "Error: invalid settings: default_max_tokens (--n-predict) 5000 is above max_tokens_limit"),
    ]  # fmt: skip
    for args, message in cases:
        result = run_serve(*args, HYCHAT_LOG_LEVEL="info")
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "llama.cpp loaded" not in result.stderr
