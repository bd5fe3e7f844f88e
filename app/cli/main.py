"""`hychat`: serve, chat and generate from the command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from app.errors import HychatError
from config.settings import Settings


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by every command that loads a model; unset flags keep the settings' values."""
    options = [
        click.option("--model", "llamacpp_model_path", help="GGUF file (default: the embedded SmolLM2)."),
        click.option("--n-ctx", "llamacpp_n_ctx", type=int, help="Context window in tokens."),
        click.option("--threads", "llamacpp_n_threads", type=int, help="CPU threads (default: physical cores)."),
        click.option("--n-gpu-layers", "llamacpp_n_gpu_layers", type=int, help="Layers to offload to a GPU build."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@click.group()
def cli() -> None:
    """Chat with a GGUF model through llama.cpp, on the CPU."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--api-key", help="Require this key on every /api route.")
@model_options
def serve(**overrides: Any) -> None:
    """Start the HTTP server."""
    import uvicorn

    from app.main import create_app

    settings = build_settings(**overrides)
    logging.getLogger("app").setLevel(logging.INFO)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


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
    from app.services.registry import chat_backend, load_configured

    try:
        load_configured(settings)
        return chat_backend(settings)
    except HychatError as error:
        raise click.ClickException(str(error)) from None
