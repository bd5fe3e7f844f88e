"""`hychat`: serve, chat and generate from the command line."""

from __future__ import annotations

import faulthandler
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, get_args

import click
from pydantic import ValidationError

from app.errors import HychatError
from config.settings import DTYPES, CacheType, Settings, SpecTypeName

if TYPE_CHECKING:
    from app.services.registry import Registry


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by every command that loads a model; unset flags keep the settings' values.
    --model, --n-ctx and --threads apply to the backend that answers (--backend). Each also takes
    llama-server's name for it (-m, -t, -ngl / --gpu-layers); -c / --ctx-size is llama-server's
    context of all requests together."""
    options = [
        click.option("--backend", type=click.Choice(["auto", "llamacpp", "pytorch"]), help="Backend that answers."),
        click.option("--model", "-m", "model", help="GGUF file (llama.cpp), or checkpoint folder / GGUF (PyTorch)."),
        click.option("--n-ctx", type=int, help="Context window of each request, in tokens."),
        click.option("--ctx-size", "-c", "ctx_size", type=int,
                     help="llama-server's: the context of all requests together; each gets ctx-size / parallel."),
        click.option("--threads", "-t", "threads", type=int, help="CPU threads (default: physical cores)."),
        click.option("--n-gpu-layers", "-ngl", "--gpu-layers", "llamacpp_n_gpu_layers", type=int,
                     help="llama.cpp layers to offload to a GPU (-1: all)."),
        click.option("--dtype", "torch_dtype", type=click.Choice(DTYPES), help="PyTorch weights dtype."),
        click.option("--lora", "torch_lora_path", help="PyTorch: peft LoRA adapter folder."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`hychat serve`'s own flags, by hychat's names and llama-server's; each sets one setting."""
    options = [
        click.option("--host", multiple=True,
                     help="Address to bind (default 127.0.0.1); several: repeat it or comma-separate them."),
        click.option("--port", type=int, help="Port (default 8000)."),
        click.option("--api-key", help="Require this key on every API route."),
        click.option("--cors-origins", help="Browser origins allowed to call the API, comma-separated "
                     "(localhost: any page served from this machine; default: none)."),
        click.option("--parallel", "-np", "parallel", type=int, help="llama.cpp requests decoded together (4)."),
        click.option("--kv-unified/--no-kv-unified", "-kvu/-no-kvu", "kv_unified", default=None,
                     help="llama.cpp slots share their KV cells: a request may use the whole -c (off)."),
        click.option("--cache-type-k", "-ctk", "cache_type_k", type=click.Choice(get_args(CacheType)),
                     help="llama.cpp's KV cache type for K (f16; q8_0: about half the memory)."),
        click.option("--cache-type-v", "-ctv", "cache_type_v", type=click.Choice(get_args(CacheType)),
                     help="The same for V."),
        click.option("--cache-ram", "-cram", "cache_ram_mib", type=int,
                     help="MiB of RAM keeping slots' prompt states for returning conversations (512; 0: none)."),
        click.option("--cache-disk", "cache_disk_dir",
                     help="A folder keeping the prompt states the RAM lets go, and all of them at shutdown."),
        click.option("--cache-disk-mib", "cache_disk_mib", type=int, help="The most that folder holds (4096 MiB)."),
        click.option("--spec-type", "spec_type", type=click.Choice(get_args(SpecTypeName)),
                     help="Speculative decoding of llama.cpp requests (ngram; llama-server's ngram-* names are ngram; "
                     "draft, draft-simple: the draft model's; none: off)."),
        click.option("--spec-draft-model", "-md", "--model-draft", "spec_draft_model",
                     help="GGUF draft model of the configured model (same vocabulary); --spec-type defaults to draft."),
        click.option("--spec-draft-p-min", "--draft-p-min", "spec_draft_p_min", type=float,
                     help="A draft model's draft stops at a token it gives less probability (0)."),
        click.option("--spec-draft-n-max", "--draft-max", "--draft-n", "--draft", "spec_draft_n_max", type=int,
                     help="Most draft tokens verified in one step (64)."),
        click.option("--spec-draft-n-min", "--draft-min", "--draft-n-min", "spec_draft_n_min", type=int,
                     help="A shorter draft is not verified (0)."),
        click.option("--spec-ngram-size-n", "--spec-ngram-simple-size-n", "spec_ngram_size_n", type=int,
                     help="Tokens matched to find a draft (3)."),
        click.option("--spec-ngram-min-hits", "--spec-ngram-simple-min-hits", "spec_ngram_min_hits", type=int,
                     help="Times they must have occurred before (1)."),
        click.option("--batch-size", "-b", "llamacpp_n_batch", type=int,
                     help="Tokens llama.cpp decodes in one step (512): a longer prompt is read in several."),
        click.option("--alias", "-a", "alias",
                     help="Name(s) of the model, comma-separated: the first is reported, each is accepted."),
        click.option("--verbose", "-v", "log_level", flag_value="debug", default=None,
                     help="Log level debug; every /v1 answer also carries llama-server's __verbose."),
        click.option("--tags", "model_tags", help="Tags of the model /v1/models shows, comma-separated."),
        click.option("--slots/--no-slots", "endpoint_slots", default=None, help="GET /slots on or off (on)."),
        click.option("--metrics/--no-metrics", "endpoint_metrics", default=None,
                     help="GET /metrics on or off (on; llama-server's is off unless --metrics)."),
        click.option("--chat-template", help="llama.cpp built-in template (chatml, llama3, gemma...) or a Jinja "
                     "template text, in place of the model's."),
        click.option("--chat-template-file", help="Jinja chat template file, in place of the model's."),
        click.option("--jinja/--no-jinja", default=None,
                     help="--no-jinja: render chats with llama.cpp's built-in templates (default: Jinja)."),
        click.option("--reasoning", "-rea", "think", type=click.Choice(["on", "off", "auto"]),
                     help="Let models reason before answering (auto: each model's default)."),
        click.option("--reasoning-format", type=click.Choice(["auto", "deepseek", "none"]),
                     help="auto (= deepseek): reasoning apart from the answer; none: the raw text."),
        click.option("--n-predict", "-n", "default_max_tokens", type=int,
                     help="max_tokens of requests that set none (-1: each API's default)."),
        click.option("--temp", "default_temperature", type=float, help="Temperature of requests that set none."),
        click.option("--top-k", "default_top_k", type=int, help="top_k of requests that set none."),
        click.option("--top-p", "default_top_p", type=float, help="top_p of requests that set none."),
        click.option("--min-p", "default_min_p", type=float, help="min_p of requests that set none."),
        click.option("--repeat-penalty", "default_repetition_penalty", type=float,
                     help="Repetition penalty of requests that set none."),
        click.option("--seed", "-s", "default_seed", type=int, help="Seed of requests that set none (-1: random)."),
        click.option("--ray", "ray_address", help="Serve on this Ray cluster (ray://host:10001, auto; local: start "
                     "one here): --replicas copies of the model behind one gateway (the `cluster` extra)."),
        click.option("--replicas", "ray_replicas", type=int, help="Replicas on the Ray cluster (2)."),
        click.option("--ray-routing", "ray_routing", type=click.Choice(["prefix", "balanced"]),
                     help="prefix: to the replica holding the longest prefix of the prompt (default); balanced: "
                     "the shorter queue of two."),
        click.option("--max-replicas", "ray_max_replicas", type=int,
                     help="Above --replicas: Ray adds replicas under load, up to this many."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


# The shared flags name settings of the backend that answers.
_BACKEND_FLAGS = {
    "llamacpp": {"model": "llamacpp_model_path", "n_ctx": "llamacpp_n_ctx", "threads": "llamacpp_n_threads"},
    "pytorch": {"model": "torch_model_path", "n_ctx": "torch_n_ctx", "threads": "torch_n_threads"},
}


def build_settings(**flags: Any) -> Settings:
    """Settings from the environment with the flags given on top. A value out of range is the
    command's error naming the flag (or the variable), not a traceback."""
    names = _BACKEND_FLAGS["pytorch" if flags.get("backend") == "pytorch" else "llamacpp"]
    ctx_size = flags.pop("ctx_size", None)
    given = {names.get(k, k): v for k, v in flags.items() if v is not None}
    flag_of = {names.get(k, k): k for k in flags}
    settings = _settings(given, flag_of, given)
    if ctx_size is None:
        return settings
    # llama-server's -c is the context of all slots together; hychat's n_ctx is each slot's.
    if flags.get("n_ctx") is not None:
        raise click.UsageError("give either --n-ctx (each request's) or -c / --ctx-size (all together)")
    slots = settings.parallel if names["n_ctx"] == "llamacpp_n_ctx" else 1
    shown = f"{ctx_size} ({ctx_size} / {slots} slots = {ctx_size // slots} tokens for each request)"
    given[names["n_ctx"]], flag_of[names["n_ctx"]] = ctx_size // slots, "ctx_size"
    return _settings(given, flag_of, {**given, names["n_ctx"]: shown})


def _settings(given: dict[str, Any], flag_of: dict[str, str], shown: dict[str, Any]) -> Settings:
    try:
        return Settings(**given)
    except ValidationError as error:
        raise _setting_error(error.errors()[0], flag_of, shown) from None


def _setting_error(error: Any, flag_of: dict[str, str], shown: dict[str, Any]) -> click.ClickException:
    """The first problem pydantic found, named by the flag that gave the value, else by its variable."""
    field = str(error["loc"][0]) if error["loc"] else None
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    context = click.get_current_context(silent=True)
    if field in shown and field in flag_of and context is not None:
        option = next(p for p in context.command.params if p.name == flag_of[field])
        value = shown[field] if isinstance(shown[field], str) and option.name == "ctx_size" else repr(shown[field])
        return click.BadParameter(f"{value}: {message}", context, option)
    if field is None:
        return click.ClickException(f"invalid settings: {message}")
    return click.ClickException(f"invalid setting HYCHAT_{field.upper()}: {message}")


@click.group()
def cli() -> None:
    """Chat with a GGUF model through llama.cpp, on the CPU."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A fatal signal in native code (llama.cpp, torch) cannot be caught, but this leaves each
    # thread's Python traceback on stderr (the server's log) instead of a silent exit.
    faulthandler.enable()


@cli.command()
@server_options
@model_options
def serve(host: tuple[str, ...], **overrides: Any) -> None:
    """Start the HTTP server. Flags take hychat's names or llama-server's (-m, -c, -np, -t, -ngl,
    --alias, --chat-template, --temp...); --jinja / --no-jinja as there (hychat renders Jinja unless
    --no-jinja)."""
    import uvicorn

    from app.logging_setup import configure_logging
    from app.main import create_app

    settings = serve_settings(host, **overrides)
    configure_logging(settings.log_level)
    if settings.ray_address:
        return _serve_on_ray(settings)
    # Bound before any model loads: a taken port or a wrong host costs one line, not a 7B load first.
    listeners = _bind_all(settings.hosts(), settings.port)
    registry = _load_configured(settings)  # here, not in the app's start-up: a bad model file costs one line too
    try:
        app = create_app(settings, registry.backends)
    except HychatError as error:  # a route the settings give that another one serves
        raise click.ClickException(str(error)) from None
    # Our logging for uvicorn's messages too; its access log gives way to app.telemetry's request lines.
    config = uvicorn.Config(
        app,
        host=settings.hosts()[0],  # for uvicorn's "running on" line; every listener serves
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
    )
    if len(listeners) > 1:
        logging.getLogger(__name__).info("listening on %s", ", ".join(_url(s.getsockname()) for s in listeners))
    uvicorn.Server(config).run(sockets=listeners)


def _serve_on_ray(settings: Settings) -> None:
    try:
        from app.cluster.deployment import run
    except ImportError as error:
        raise click.ClickException(f"--ray needs Ray Serve: pip install 'hychat[cluster]' ({error})") from None
    run(settings)


def serve_settings(host: tuple[str, ...] = (), **flags: Any) -> Settings:
    """`hychat serve`'s settings: `--host` given again adds an address (as a comma does)."""
    return build_settings(host=",".join(host) or None, **flags)


def _bind_all(hosts: list[str], port: int) -> list[socket.socket]:
    """A listening socket for each address; none if any fails (the error names that one)."""
    listeners: list[socket.socket] = []
    try:
        for host in hosts:
            # Beside other addresses, :: is IPv6 alone (as llama-server): else it takes IPv4's port too.
            listeners.append(_bind(host, port, v6only=len(hosts) > 1))
    except click.ClickException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _url(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind(host: str, port: int, v6only: bool = False) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a quick restart rebinds
            if v6only and family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
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
