"""Hot reload (`POST /admin/reload`, `hychat reload`) against a real server on the embedded model:
damaged or forbidden files are refused with a 4xx naming the problem while the model loaded before
keeps answering the same greedy text; a good file switches the served model while a stream that
started before the reload finishes on the old one."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from app.errors import ModelPathForbiddenError, ReloadInProgressError
from app.services import reload as reload_service
from app.services.registry import Registry
from config.settings import Settings
from tests.conftest import REPO

KEY = "admin-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHINESE = [{"role": "user", "content": "请用一句话介绍一下北京。"}]
LONG_CHINESE = [{"role": "user", "content": "请详细介绍一下中国古代的四大发明。"}]
SIZE = 98362432  # the embedded GGUF


@pytest.fixture(scope="module")
def original(model_path: str) -> bytes:
    return Path(model_path).read_bytes()


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_path: str) -> Path:
    """The model folder: smol-a.gguf (served at start) and smol-b.gguf, the same weights."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copyfile(model_path, folder / "smol-a.gguf")
    os.link(folder / "smol-a.gguf", folder / "smol-b.gguf")
    (folder / "sub").mkdir()
    return folder


@pytest.fixture(scope="module")
def outside(tmp_path_factory, models: Path) -> Path:
    """A good model outside the model folders."""
    folder = tmp_path_factory.mktemp("outside")
    os.link(models / "smol-a.gguf", folder / "other.gguf")
    return folder


@pytest.fixture(scope="module")
def server(start_server, models: Path, tmp_path_factory):
    extra = tmp_path_factory.mktemp("more-models")  # a second folder: the list is comma-separated
    env = {
        "HYCHAT_LLAMACPP_MODEL_PATH": str(models / "smol-a.gguf"),
        "HYCHAT_MODEL_DIRS": f"{models},{extra}",
        "HYCHAT_API_KEY": KEY,
        "HYCHAT_LLAMACPP_N_CTX": "512",
        "HYCHAT_PARALLEL": "2",
        "HYCHAT_LLAMACPP_N_THREADS": "1",  # the machine is shared: one thread does not spin-wait for others
    }
    return start_server(env, log_path=tmp_path_factory.mktemp("log") / "server.log")


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as c:
        yield c


def chat(client: httpx.Client, messages=CHINESE, max_tokens: int = 12) -> dict:
    r = client.post("/api/chat", json={"messages": messages, "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def baseline(client) -> str:
    """The greedy answer before any reload."""
    answer = chat(client)
    assert answer["model"] == "smol-a.gguf" and answer["response"].strip()
    return answer["response"]


def served_models(client: httpx.Client) -> list[str]:
    """The loaded models (/v1/models lists the rest of the model folders too)."""
    return [card["id"] for card in client.get("/v1/models").json()["data"] if card["status"]["value"] == "loaded"]


def reload(client: httpx.Client, model_path: str, **extra) -> httpx.Response:
    return client.post("/admin/reload", json={"model_path": model_path, **extra})


# -- access ------------------------------------------------------------------------------------


def test_admin_routes_need_the_api_key(server, models):
    body = {"model_path": "smol-b.gguf"}
    with httpx.Client(base_url=server.url, timeout=300) as anonymous:
        r = anonymous.post("/admin/reload", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = anonymous.post("/admin/reload", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert anonymous.get("/admin/reload", headers=AUTH).status_code == 405


def test_admin_routes_are_off_on_a_server_without_an_api_key(start_server, models):
    open_server = start_server({"HYCHAT_LLAMACPP_MODEL_PATH": str(models / "smol-a.gguf"), "HYCHAT_API_KEY": ""})
    with httpx.Client(base_url=open_server.url, timeout=300) as anonymous:
        r = anonymous.post("/admin/reload", json={"model_path": str(models / "smol-b.gguf")}, headers=AUTH)
        assert r.status_code == 403, r.text
        assert "admin routes need HYCHAT_API_KEY" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "permission_error"
        assert served_models(anonymous) == ["smol-a.gguf"]
    open_server.stop()


# -- damaged and forbidden files -----------------------------------------------------------------


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def first_tensor_offset_field(data: bytes) -> int:
    name = b"token_embd.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    return at + 4 + 8 * n_dims + 4


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name  # relative: taken inside the first model folder


def symlink(path: Path, target: Path) -> str:
    path.symlink_to(target)
    return str(path)


def fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


FILE, FORBIDDEN = "model_file_error", "model_path_forbidden"
STATUS = {FILE: 400, FORBIDDEN: 403, "invalid_parameter": 400}

# case: (makes the file in the model folder and returns the path to send, error code, message needle)
CASES = {
    "missing": (lambda m, o, data: "nope.gguf", FILE, "nope.gguf: file not found"),
    "empty": (lambda m, o, data: write(m / "empty.gguf", b""), FILE, "the file is empty"),
    "directory": (lambda m, o, data: str(m / "sub"), FILE, "not a regular file"),
    "fifo": (lambda m, o, data: fifo(m / "pipe.gguf"), FILE, "not a regular file"),
    "not_gguf": (lambda m, o, data: write(m / "notes.gguf", "模型说明\n".encode() * 100), FILE, "not a GGUF file"),
    "flipped_magic": (lambda m, o, data: write(m / "magic.gguf", patched(data[:4096], 0, b"FUGG")), FILE, "b'FUGG'"),
    "future_version": (
        lambda m, o, data: write(m / "v99.gguf", patched(data[:4096], 4, struct.pack("<I", 99))),
        FILE,
        "unsupported GGUF version 99",
    ),
    "header_cut": (
        lambda m, o, data: write(m / "head.gguf", data[:1_000_000]),
        FILE,
        "truncated: the header ends past the end",
    ),
    "data_cut": (
        lambda m, o, data: write(m / "cut.gguf", data[:60_000_000]),
        FILE,
        f"truncated: expected at least {SIZE} bytes, file has 60000000",
    ),
    "data_cut_in_the_first_tensor": (
        lambda m, o, data: write(m / "cut-early.gguf", data[:3_000_000]),
        FILE,
        "truncated or corrupt: tensor token_embd.weight needs 30081024 bytes, the file has 3000000",
    ),
    "absurd_tensor_count": (
        lambda m, o, data: write(m / "tensors.gguf", patched(data[:4096], 8, struct.pack("<Q", 1 << 40))),
        FILE,
        "1099511627776 tensors",
    ),
    "absurd_key_count": (
        lambda m, o, data: write(m / "keys.gguf", patched(data[:4096], 16, struct.pack("<Q", 1 << 40))),
        FILE,
        "1099511627776 metadata keys",
    ),
    "absurd_tensor_offset": (
        lambda m, o, data: write(
            m / "offset.gguf", patched(data, first_tensor_offset_field(data), struct.pack("<Q", 1 << 45))
        ),
        FILE,
        "tensor token_embd.weight at data offset 35184372088832 ends past the end",
    ),
    "nul_byte": (lambda m, o, data: "smol-a.gguf\0.txt", "invalid_parameter", "NUL"),
    "dev_zero": (lambda m, o, data: "/dev/zero", FORBIDDEN, "outside the model folders"),
    "symlink_to_dev_zero": (
        lambda m, o, data: symlink(m / "zero.gguf", Path("/dev/zero")),
        FORBIDDEN,
        "outside the model folders",
    ),
    "outside": (lambda m, o, data: str(o / "other.gguf"), FORBIDDEN, "outside the model folders"),
    "dotdot_relative": (lambda m, o, data: f"../{o.name}/other.gguf", FORBIDDEN, "outside the model folders"),
    "dotdot_absolute": (
        lambda m, o, data: f"{m}/sub/../../{o.name}/other.gguf",
        FORBIDDEN,
        "outside the model folders",
    ),
    "symlink_escape": (
        lambda m, o, data: symlink(m / "escape.gguf", o / "other.gguf"),
        FORBIDDEN,
        "outside the model folders",
    ),
    "etc_passwd": (lambda m, o, data: "../" * 30 + "etc/passwd", FORBIDDEN, "outside the model folders"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_refused_and_the_old_model_keeps_answering(case, client, baseline, models, outside, original):
    make, code, needle = CASES[case]
    before = served_models(client)
    r = reload(client, make(models, outside, original))
    assert r.status_code == STATUS[code], r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["code"] == code
    assert served_models(client) == before
    assert chat(client)["response"] == baseline


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"model_path": "smol-b.gguf", "backend": "tensorflow"}, "backend"),
        ({"model_path": ""}, "model_path"),
        ({"model_path": "smol-b.gguf", "n_ctx": 9}, "n_ctx"),
        ({"model_path": "nope.gguf", "backend": "pytorch"}, "file not found"),
        ({"model_path": "torch-magic.gguf", "backend": "pytorch"}, "b'FUGG'"),
        ({"model_path": "sub", "backend": "pytorch"}, "not a Hugging Face checkpoint folder"),
    ],
)
def test_bad_requests_and_the_pytorch_backend_get_a_400(client, baseline, models, original, body, needle):
    write(models / "torch-magic.gguf", patched(original[:4096], 0, b"FUGG"))
    r = client.post("/admin/reload", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert chat(client)["response"] == baseline


# -- good reloads --------------------------------------------------------------------------------


def stream_chat(client: httpx.Client, messages: list[dict], max_tokens: int):
    body = {"model": "default", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    return connect_sse(client, "POST", "/v1/chat/completions", json=body)


def test_a_good_reload_switches_the_model_while_a_running_stream_finishes_on_the_old_one(
    client, server, baseline, models
):
    assert served_models(client) == ["smol-a.gguf"]
    body = {"model": "default", "messages": LONG_CHINESE, "max_tokens": 96, "temperature": 0}
    expected = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    simple = {"messages": LONG_CHINESE, "max_new_tokens": 96, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as other:
        with (
            stream_chat(other, LONG_CHINESE, 96) as source,
            connect_sse(other, "POST", "/api/chat", json=simple) as simple_source,
        ):
            events, simple_events = source.iter_sse(), simple_source.iter_sse()
            texts = []
            while not texts or not texts[-1]:  # the generation has started on smol-a
                chunk = json.loads(next(events).data)
                texts.append(chunk["choices"][0]["delta"].get("content") or "")
            next(simple_events)  # and so has the /api/chat one
            r = reload(client, str(models / "smol-b.gguf"))
            assert r.status_code == 200, r.text
            for event in events:
                if event.data == "[DONE]":
                    break
                chunk = json.loads(event.data)
                assert "error" not in chunk and chunk["model"] == "smol-a.gguf"
                texts.append(chunk["choices"][0]["delta"].get("content") or "")
            done = [json.loads(e.data) for e in simple_events if e.event == "done"]
    assert "".join(texts) == expected
    assert [d["model"] for d in done] == ["smol-a.gguf"]  # named for the model that answered
    info = r.json()
    assert info["model"] == "smol-b.gguf" and info["previous_model"] == "smol-a.gguf"
    assert info["path"] == str(models / "smol-b.gguf") and info["n_ctx"] == 512 and info["parallel"] == 2
    assert info["n_threads"] == 1  # the configured load settings carry over
    assert served_models(client) == ["smol-b.gguf"]
    assert client.get("/api/info").json()["backends"]["llamacpp"]["path"] == str(models / "smol-b.gguf")
    answer = chat(client)
    assert answer["model"] == "smol-b.gguf" and answer["response"] == baseline  # the same weights


def test_a_relative_path_is_taken_inside_the_first_model_folder(client, baseline, models):
    r = reload(client, "sub/../smol-a.gguf", backend="llamacpp")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == str(models / "smol-a.gguf")
    assert served_models(client) == ["smol-a.gguf"] and chat(client)["response"] == baseline


def test_concurrent_reloads_do_not_interleave(client, server, baseline, models):
    barrier, statuses = threading.Barrier(3), []

    def one(name: str) -> None:
        with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as own:
            barrier.wait()
            r = reload(own, name)
            statuses.append((r.status_code, r.json()))

    threads = [threading.Thread(target=one, args=(name,)) for name in ("smol-b.gguf", "smol-a.gguf", "smol-b.gguf")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(code for code, _ in statuses)
    assert codes[0] == 200 and 409 in codes, statuses  # one loads, one at least is turned away at once
    for code, body in statuses:
        if code == 409:
            assert body["error"]["code"] == "reload_in_progress"
            assert "another model reload is in progress" in body["error"]["message"]
    loaded = [body["model"] for code, body in statuses if code == 200]
    assert served_models(client) == [loaded[-1]] or len(loaded) > 1
    assert chat(client)["response"] == baseline


def test_a_reload_while_another_runs_is_refused_at_once(tmp_path):
    """The lock itself, without a server: held by a reload in progress."""
    registry = Registry(Settings(model_dirs=str(tmp_path), api_key=KEY))
    with registry.reloading:
        with pytest.raises(ReloadInProgressError):
            reload_service.reload_model(registry, "any.gguf", "llamacpp")


def test_allowed_model_path(tmp_path, outside):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "link.gguf").symlink_to(tmp_path / "target.gguf")
    settings = Settings(model_dirs=[str(tmp_path / "inner"), str(tmp_path)])
    allowed = reload_service.allowed_model_path
    assert allowed(settings, "x.gguf") == tmp_path / "inner" / "x.gguf"
    assert allowed(settings, "../target.gguf") == tmp_path / "target.gguf"  # inside the second folder
    assert allowed(settings, "link.gguf") == tmp_path / "target.gguf"
    with pytest.raises(ModelPathForbiddenError):
        allowed(settings, str(outside / "other.gguf"))
    with pytest.raises(ModelPathForbiddenError):
        allowed(Settings(model_dirs=str(tmp_path / "inner")), "../target.gguf")


def test_the_model_folders_default_to_the_configured_models_folders(tmp_path, model_path):
    settings = Settings(_env_file=None, model_dirs=[], llamacpp_model_path=str(tmp_path / "inner" / "m.gguf"))
    assert settings.model_folders() == [(tmp_path / "inner").resolve(), Path(model_path).parent.resolve()]


# -- the CLI -------------------------------------------------------------------------------------


def hychat(*args: str, api_key: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HYCHAT_API_KEY": api_key}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_cli_reloads_and_reports_errors(server, client, baseline, models):
    done = hychat("reload", "smol-b.gguf", "--url", server.url, api_key=KEY)  # the key from HYCHAT_API_KEY
    assert done.returncode == 0, done.stderr
    assert "llamacpp now serves smol-b.gguf" in done.stdout and str(models / "smol-b.gguf") in done.stdout
    assert served_models(client) == ["smol-b.gguf"]

    done = hychat("reload", "empty.gguf", "--url", server.url, "--backend", "llamacpp", "--api-key", KEY)
    assert done.returncode == 1 and "400" in done.stderr and "the file is empty" in done.stderr

    done = hychat("reload", str(models / "../x.gguf"), "--url", server.url, "--api-key", KEY)
    assert done.returncode == 1 and "outside the model folders" in done.stderr

    done = hychat("reload", "smol-a.gguf", "--url", server.url, "--api-key", "wrong")
    assert done.returncode == 1 and "401" in done.stderr

    done = hychat("reload", "smol-a.gguf", "--url", "http://127.0.0.1:9", api_key=KEY)
    assert done.returncode == 1 and "cannot reach" in done.stderr

    assert served_models(client) == ["smol-b.gguf"] and chat(client)["response"] == baseline


def test_the_server_survived_everything(server, client, baseline):
    assert server.process.poll() is None
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json()["backends"] == ["llamacpp"]
    assert chat(client)["response"] == baseline
