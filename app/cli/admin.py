"""Commands for a running server: `hychat models` and `hychat ps` (what it serves and holds),
`hychat load` / `hychat unload` (a library model, by name), `hychat reload` (another model file into a
configured backend, `POST /admin/reload`)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import click

from config.settings import Settings

RELOAD_TIMEOUT_S = 600  # a 7B model can take minutes to load from a cold disk


@click.command()
@click.argument("model_path")
@click.option("--url", help="The server (default: http://127.0.0.1:<HYCHAT_PORT>).")
@click.option("--backend", type=click.Choice(["llamacpp", "pytorch"]), help="Backend to reload (default: the server's)")
@click.option("--api-key", help="The server's API key (default: HYCHAT_API_KEY).")
def reload(model_path: str, url: str | None, backend: str | None, api_key: str | None) -> None:
    """Load MODEL_PATH into a running server. The path is on the server: absolute, or relative to
    its first model folder (HYCHAT_MODEL_DIRS). Exit 1 when the server refuses; it keeps serving the
    model it had."""
    body = {"model_path": model_path, **({"backend": backend} if backend else {})}
    answer = _post(_base(url) + "/admin/reload", body, _key(api_key))
    previous = answer.get("previous_model")
    click.echo(f"{answer.get('backend')} now serves {answer.get('model')} (was {previous})")
    click.echo(f"path {answer.get('path')}")


def server_options(command: Callable) -> Callable:
    command = click.option("--api-key", help="The server's API key (default: HYCHAT_API_KEY).")(command)
    return click.option("--url", help="The server (default: http://127.0.0.1:<HYCHAT_PORT>).")(command)


@click.command()
@server_options
def models(url: str | None, api_key: str | None) -> None:
    """List the server's models, loaded or not (GET /v1/models); a model that cannot load says why."""
    for model in _get(url, "/v1/models", api_key)["data"]:
        status = model.get("status") or {"value": "loaded"}
        line = f"{model['id']}  {model['backend']}  {status['value']}"
        if status.get("problem"):
            line += f": {status['problem']}"
        click.echo(line + (f"  (also {', '.join(model['aliases'])})" if model.get("aliases") else ""))


@click.command()
@server_options
def ps(url: str | None, api_key: str | None) -> None:
    """The loaded models: the memory each takes and when it will be unloaded (GET /api/ps)."""
    click.echo(f"{'NAME':40} {'MEMORY':>10}  UNTIL")
    for model in _get(url, "/api/ps", api_key)["models"]:
        until = model["expires_at"][:19].replace("T", " ") + " UTC"
        if int(until[:4]) > time.gmtime().tm_year + 100:  # Ollama's "forever": a time far ahead
            until = "unloaded or evicted"
        click.echo(f"{model['name']:40} {model['size'] / 2**20:>6.0f} MiB  {until}")


@click.command()
@click.argument("model")
@click.option("--keep-alive", help="How long it stays when idle: seconds or a duration (5m); -1: until unloaded.")
@server_options
def load(model: str, keep_alive: str | None, url: str | None, api_key: str | None) -> None:
    """Load MODEL (a name from `hychat models`) into a running server now."""
    body = {"model": model, **({"keep_alive": keep_alive} if keep_alive is not None else {})}
    answer = _post(_base(url) + "/models/load", body, _key(api_key))
    click.echo(f"{answer.get('model')} is loaded ({answer.get('path')})")


@click.command()
@click.argument("model")
@server_options
def unload(model: str, url: str | None, api_key: str | None) -> None:
    """Unload MODEL from a running server (at once when idle, else when its requests end)."""
    answer = _post(_base(url) + "/models/unload", {"model": model}, _key(api_key))
    click.echo(f"{model} is unloaded" if answer.get("unloaded") else f"{model} will unload when its requests end")


def _base(url: str | None) -> str:
    return (url or f"http://127.0.0.1:{Settings().port}").rstrip("/")


def _key(api_key: str | None) -> str | None:
    return api_key or Settings().api_key


def _get(url: str | None, path: str, api_key: str | None) -> dict:
    key = _key(api_key)
    request = urllib.request.Request(_base(url) + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    return _answer(request, _base(url))


def _post(url: str, body: dict, api_key: str | None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    return _answer(urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST"), url)


def _answer(request: urllib.request.Request, url: str) -> dict:
    try:
        with urllib.request.urlopen(request, timeout=RELOAD_TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise click.ClickException(f"{error.code}: {_message(error.read())}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise click.ClickException(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None


def _message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace")[:500] or "no message"


COMMANDS = [models, ps, load, unload, reload]
