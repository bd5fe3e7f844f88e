"""Security defaults: the API key guards every route that is not a probe or the page, CORS is off
unless configured, the server binds to 127.0.0.1, and a GGUF file's chat template cannot reach
Python's internals."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from app.errors import ChatTemplateError
from app.main import create_app
from app.modelfiles.gguf import read_gguf
from config.settings import Settings

# Open on purpose: probes for orchestrators, and the chat page, which holds no data (its API calls carry the key).
# `HEAD /`: Ollama's clients ask whether a server is there.
OPEN_ROUTES = {("GET", "/health"), ("GET", "/ready"), ("GET", "/"), ("HEAD", "/"), ("GET", "/static")}


def _flatten(routes: list) -> list:
    """FastAPI 0.16x keeps an included router whole (`original_router`); older ones copy its routes in."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat += _flatten(inner.routes) if inner is not None else [route]
    return flat


def _routes() -> set[tuple[str, str]]:
    """Every route the app answers, from its router (not its OpenAPI schema, which can hide some)."""
    routes = set()
    for route in _flatten(create_app().routes):
        if isinstance(route, APIRoute):
            routes |= {(method, route.path) for method in route.methods}
        elif isinstance(route, Mount):
            routes.add(("GET", route.path))
        elif hasattr(route, "methods"):  # FastAPI's own /docs, /openapi.json
            routes |= {(method, route.path) for method in route.methods if method != "HEAD"}
    return routes


def test_the_api_key_guards_every_route_but_the_probes_and_the_page(start_server):
    routes = _routes()
    guarded = routes - OPEN_ROUTES - {("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
                                      ("GET", "/openapi.json")}  # fmt: skip
    for needed in [("POST", "/api/chat"), ("GET", "/api/info"), ("POST", "/v1/chat/completions"),
                   ("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/tokenize"),
                   ("POST", "/detokenize"), ("POST", "/apply-template"), ("POST", "/v1/embeddings"),
                   ("POST", "/v1/messages"), ("POST", "/v1/responses"), ("POST", "/api/generate"),
                   ("GET", "/api/tags")]:  # fmt: skip
        assert needed in guarded

    server = start_server({"HYCHAT_API_KEY": "s3cret"})
    for method, path in sorted(guarded):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": "s3cret"}):
            r = httpx.request(method, server.url + path, json={"prompt": "你好"}, headers=headers, timeout=300)
            assert r.status_code == 401, (method, path, headers, r.text)
            error = r.json()["error"]  # each dialect's shape: Ollama's is a bare message
            kind = error if isinstance(error, str) else error["type"]
            assert r.headers["www-authenticate"] == "Bearer" and ("API key" in kind or kind == "authentication_error")
    good = {"prompt": "你好", "max_new_tokens": 4}
    for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
        assert httpx.post(f"{server.url}/api/chat", json=good, headers=headers, timeout=300).status_code == 200
    for method, path in OPEN_ROUTES - {("GET", "/static")}:
        assert httpx.request(method, server.url + path).status_code == 200, path
    assert httpx.get(f"{server.url}/static/chat.js").status_code == 200


PREFLIGHT = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}


def test_cors_is_off_unless_configured():
    with TestClient(create_app(Settings(_env_file=None), backends={})) as client:  # CORS needs no model
        r = client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in r.headers
        r = client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(monkeypatch):
    monkeypatch.setenv("HYCHAT_CORS_ORIGINS", "https://chat.example, https://other.example")
    settings = Settings(_env_file=None)
    assert settings.cors_origins == ["https://chat.example", "https://other.example"]
    with TestClient(create_app(settings, backends={})) as client:
        r = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://chat.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://chat.example"
        r = client.options("/v1/chat/completions", headers=PREFLIGHT)  # llama-server's answer: no header
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_answers_as_llama_server_with_the_api_key_allowed(monkeypatch):
    """llama-server's header names as it writes them (its clients compare them so), credentials, and
    the requested headers named: a "*" would not cover Authorization."""
    monkeypatch.setenv("HYCHAT_CORS_ORIGINS", "*")
    monkeypatch.setenv("HYCHAT_API_KEY", "秘钥".encode().hex())
    with TestClient(create_app(Settings(_env_file=None), backends={})) as client:
        asked = {**PREFLIGHT, "Access-Control-Request-Headers": "Authorization, Content-Type"}
        r = client.options("/v1/chat/completions", headers=asked)  # no key: browsers send none with a preflight
        assert r.status_code == 200
        names = [name.decode() for name, _ in r.headers.raw]
        assert {"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Allow-Methods"} <= {
            *names
        }
        assert (r.headers["access-control-allow-origin"], r.headers["access-control-allow-credentials"]) == (
            "https://elsewhere.example", "true"
        )  # fmt: skip
        assert r.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
        assert r.headers["access-control-allow-headers"] == "Authorization, Content-Type"
        r = client.get("/v1/models", headers={"Origin": "https://elsewhere.example"})
        assert r.status_code == 401  # CORS lets the page read the answer; the key is still asked for
        assert r.headers["access-control-allow-origin"] == "https://elsewhere.example"
        assert "X-Request-ID" in r.headers["access-control-expose-headers"]


@pytest.mark.parametrize(
    "origin", ["http://localhost", "http://localhost:8080", "https://127.0.0.1:3000", "http://[::1]:5173"]
)
def test_cors_localhost_allows_any_page_served_from_this_machine(monkeypatch, origin):
    monkeypatch.setenv("HYCHAT_CORS_ORIGINS", "localhost")  # llama-server's special value
    with TestClient(create_app(Settings(_env_file=None), backends={})) as client:
        r = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        for stranger in ("http://notlocalhost", "http://localhost.evil.com", "https://elsewhere.example"):
            r = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": stranger})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_the_server_binds_to_loopback_by_default(start_server, monkeypatch):
    monkeypatch.delenv("HYCHAT_HOST", raising=False)
    assert Settings(_env_file=None).host == "127.0.0.1"
    server = start_server()  # `hychat serve` without --host
    listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("inet") if c.status == "LISTEN"}
    assert listening == {"127.0.0.1"}


# Each would leave the marker file behind if it reached Python.
ATTACKS = [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__.__builtins__.open('MARKER', 'w').write('x') }}",
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('MARKER', 'w') }}",
    "{% set x = namespace() %}{{ x.__class__.__init__.__globals__['os'].system('touch MARKER') }}",
    "{{ ''.__class__.__base__.__subclasses__() | map(attribute='__init__') | list }}",
]


def patched_gguf(source: str, template: str, path: Path) -> Path:
    """A copy of `source` whose chat template is `template`, padded with a Jinja comment to the
    original's length so that no offset in the file moves."""
    original = read_gguf(source).metadata["tokenizer.chat_template"].encode()
    padding = len(original) - len(template.encode()) - len("{##}")
    assert padding >= 0, "the attack is longer than the template it replaces"
    replacement = (template + "{#" + " " * padding + "#}").encode()
    shutil.copyfile(source, path)
    data = path.read_bytes()
    assert data.count(original) == 1
    path.write_bytes(data.replace(original, replacement))
    assert read_gguf(path).metadata["tokenizer.chat_template"] == replacement.decode()
    return path


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_gguf_template_cannot_reach_python(attack, model_path, service, tmp_path):
    marker = tmp_path / "escaped"
    gguf = patched_gguf(model_path, attack.replace("MARKER", str(marker)), tmp_path / "patched.gguf")
    try:
        service.load_model(model_path=str(gguf))
        with contextlib.suppress(ChatTemplateError):  # refused: the sandbox stopped it
            service.chat([{"role": "user", "content": "你好"}], max_new_tokens=2)
        assert not marker.exists()
    finally:
        service.load_model(model_path=model_path)


def test_a_server_with_a_hostile_template_refuses_chats_and_keeps_serving(start_server, model_path, tmp_path):
    gguf = patched_gguf(model_path, ATTACKS[0], tmp_path / "hostile.gguf")
    server = start_server({"HYCHAT_LLAMACPP_MODEL_PATH": str(gguf)})
    chat = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 4}
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "default", **chat}, timeout=300)
    assert r.status_code == 400 and r.json()["error"]["code"] == "chat_template_error"
    assert "unsafe" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/api/chat", json={"prompt": "从前有座山，", "max_new_tokens": 4}, timeout=300)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(f"{server.url}/health").status_code == 200
