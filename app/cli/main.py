"""`hychat`: serve, chat and generate from the command line."""

from __future__ import annotations

import faulthandler
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from app.errors import HychatError
from config.settings import DTYPES, Settings

if TYPE_CHECKING:
    from app.services.registry import Registry


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by every command that loads a model; unset flags keep the settings' values.
    --model, --n-ctx and --threads apply to the backend that answers (--backend)."""
    options = [
        click.option("--backend", type=click.Choice(["auto", "llamacpp", "pytorch"]), help="Backend that answers."),
        click.option("--model", help="GGUF file (llama.cpp), or checkpoint folder / GGUF (PyTorch)."),
        click.option("--n-ctx", type=int, help="Context window in tokens."),
        click.option("--threads", type=int, help="CPU threads (default: physical cores)."),
        click.option("--n-gpu-layers", "llamacpp_n_gpu_layers", type=int, help="llama.cpp layers to offload to a GPU."),
        click.option("--dtype", "torch_dtype", type=click.Choice(DTYPES), help="PyTorch weights dtype."),
        click.option("--lora", "torch_lora_path", help="PyTorch: peft LoRA adapter folder."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# The shared flags name settings of the backend that answers.
_BACKEND_FLAGS = {
    "llamacpp": {"model": "llamacpp_model_path", "n_ctx": "llamacpp_n_ctx", "threads": "llamacpp_n_threads"},
    "pytorch": {"model": "torch_model_path", "n_ctx": "torch_n_ctx", "threads": "torch_n_threads"},
}


def build_settings(**flags: Any) -> Settings:
    """Settings from the environment with the flags given on top."""
    names = _BACKEND_FLAGS["pytorch" if flags.get("backend") == "pytorch" else "llamacpp"]
    return Settings(**{names.get(k, k): v for k, v in flags.items() if v is not None})


@click.group()
def cli() -> None:
    """Chat with a GGUF model through llama.cpp, on the CPU."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A fatal signal in native code (llama.cpp, torch) cannot be caught, but this leaves each
    # thread's Python traceback on stderr (the server's log) instead of a silent exit.
    faulthandler.enable()


@cli.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--api-key", help="Require this key on every /api route.")
@click.option("--parallel", type=int, help="llama.cpp requests decoded together (default 4).")
@model_options
def serve(**overrides: Any) -> None:
    """Start the HTTP server."""
    import uvicorn

    from app.logging_setup import configure_logging
    from app.main import create_app

    settings = build_settings(**overrides)
    configure_logging(settings.log_level)
    # Bound before any model loads: a taken port or a wrong host costs one line, not a 7B load first.
    listener = _bind(settings.host, settings.port)
    registry = _load_configured(settings)  # here, not in the app's start-up: a bad model file costs one line too
    # Our logging for uvicorn's messages too; its access log gives way to app.telemetry's request lines.
    config = uvicorn.Config(
        create_app(settings, registry.backends),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[listener])


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a quick restart rebinds
            listener.bind((host, port))
        except OSError:
            listener.close()
            raise
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


def _load_configured(settings: Settings) -> Registry:
    """The settings' models loaded; a bad file or setting is the command's one-line error."""
    from app.services.registry import Registry

    registry = Registry(settings)
    try:
        registry.load_configured()
    except HychatError as error:
        logging.getLogger(__name__).debug("the configured models did not load", exc_info=True)
        raise click.ClickException(str(error)) from None
    return registry


@cli.command()
@click.argument("prompt")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--seed", type=int)
@click.option("--raw", is_flag=True, help="Send PROMPT as is, without the chat template.")
@model_options
def generate(
    prompt: str, max_new_tokens: int, temperature: float, seed: int | None, raw: bool, **overrides: Any
) -> None:
    """Print the streamed answer to PROMPT."""
    backend = _load(build_settings(**overrides))
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    try:
        if raw:
            pieces = backend.generate_stream(prompt, **gen)
        else:
            pieces = backend.chat_stream([{"role": "user", "content": prompt}], **gen)
        _print_stream(pieces)
    except HychatError as error:
        raise click.ClickException(str(error)) from None


@cli.command()
@click.option("--system", help="System prompt.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@model_options
def chat(system: str | None, max_new_tokens: int, temperature: float, **overrides: Any) -> None:
    """Interactive multi-turn chat. Ctrl-C stops the answer; Ctrl-D or /exit quits."""
    backend = _load(build_settings(**overrides))
    messages = [{"role": "system", "content": system}] if system else []
    click.echo(f"Chatting with {backend.model_name}. Ctrl-C stops an answer, Ctrl-D or /exit quits.")
    while True:
        try:
            question = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if question.strip() in ("/exit", "/quit"):
            return
        if not question.strip():
            continue
        messages.append({"role": "user", "content": question})
        try:
            answer = _print_stream(
                backend.chat_stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)
            )
        except HychatError as error:
            messages.pop()
            click.echo(f"error: {error}", err=True)
            continue
        messages.append({"role": "assistant", "content": answer})


def _print_stream(pieces: Iterator[str]) -> str:
    """Prints pieces as they come; Ctrl-C ends the answer (closing the stream cancels generation)."""
    answer = []
    try:
        for piece in pieces:
            answer.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pieces.close()
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(answer)


def _load(settings: Settings) -> Any:
    """Loads only the backend that will answer (a server loads both to let requests choose)."""
    from app.services.registry import Registry

    name = Registry(settings).default_name()
    settings = settings.model_copy(update={"llamacpp_enabled": name == "llamacpp", "torch_enabled": name == "pytorch"})
    registry = _load_configured(settings)
    try:
        return registry.backend()
    except HychatError as error:
        raise click.ClickException(str(error)) from None


def _register_commands() -> None:
    from app.cli import admin, bench, doctor, pipeline

    for command in [*pipeline.COMMANDS, *bench.COMMANDS, *doctor.COMMANDS, *admin.COMMANDS]:
        cli.add_command(command)


_register_commands()
