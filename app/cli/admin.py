"""`hychat reload`: point a running server at another model file (`POST /admin/reload`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

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
    settings = Settings()
    url = (url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    body = {"model_path": model_path, **({"backend": backend} if backend else {})}
    answer = _post(f"{url}/admin/reload", body, api_key or settings.api_key)
    previous = answer.get("previous_model")
    click.echo(f"{answer.get('backend')} now serves {answer.get('model')} (was {previous})")
    click.echo(f"path {answer.get('path')}")


def _post(url: str, body: dict, api_key: str | None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
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


COMMANDS = [reload]
