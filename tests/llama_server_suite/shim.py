"""What `./llama-server` does: llama-server's command line, as llama.cpp's test suite writes it, turned into
a server on the embedded SmolLM2 GGUF, native llama-server or hychat (HYCHAT_SUITE_TARGET=native|hychat).

Every model flag (-m, --model-url, --hf-repo, --hf-file...) gives way to the embedded model. For hychat, a
flag passes under the first of its llama-server names that `hychat serve --help` lists (or hychat's own
name for it, RENAMED); the others are dropped with their values and named on stderr. Which flags take
values, and which names are aliases, comes from llama.cpp's common/arg.cpp.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.llama_server_suite import upstream

REPO = Path(__file__).resolve().parents[2]
MODEL_FLAGS = {"--model", "--model-url", "--hf-repo", "--hf-file"}
# Same meaning, hychat's name for it.
RENAMED = {"--ctx-size": "--n-ctx"}
# Same name, other meaning: hychat's --lora is a PyTorch peft folder, llama-server's a GGUF adapter.
NEVER = {"--lora"}


def venv_python() -> str:
    python = REPO / ".venv" / "bin" / "python"
    return str(python) if python.exists() else sys.executable


def hychat_flags() -> set[str]:
    """The flags `hychat serve --help` lists (the runner passes them in HYCHAT_SUITE_HYCHAT_FLAGS)."""
    cached = os.environ.get("HYCHAT_SUITE_HYCHAT_FLAGS")
    if cached is not None:
        return set(cached.split())
    command = [venv_python(), "-m", "app", "serve", "--help"]
    text = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    # Click's option column: `  -c, --ctx-size INTEGER  help` or `  --jinja / --no-jinja  help`.
    column = (line.strip().split("  ")[0] for line in text.splitlines() if line.strip().startswith("-"))
    return {flag for cell in column for flag in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", cell)} - {"--help"}


def model_path() -> str:
    path = os.environ.get("HYCHAT_SUITE_MODEL")
    if not path:
        from config.settings import embedded_model_path

        path = embedded_model_path()
    if not path:
        sys.exit("llama-server shim: the embedded SmolLM2 model is not installed (make install)")
    return path


def split_args(args: list[str], table: dict) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(flag, its names, its values) for each flag but the model's; an unknown one has no names, no values."""
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        names, arity = table.get(flag, ((), 0))
        if not MODEL_FLAGS & set(names):
            out.append((flag, names, args[i + 1 : i + 1 + arity]))
        i += 1 + arity
    return out


def hychat_command(args: list[str], table: dict, known: set[str]) -> tuple[list[str], list[str]]:
    """The `hychat serve` arguments, and what was dropped."""
    kept, dropped = [], []
    for flag, names, values in split_args(args, table):
        candidates = [flag, *sorted(names, key=lambda n: not n.startswith("--"))]
        candidates += [RENAMED[n] for n in names if n in RENAMED]
        target = next((n for n in candidates if n in known and n not in NEVER), None)
        if target is None:
            dropped += [flag, *values]
        else:
            kept += [target, *values]
    return kept, dropped


def main() -> None:
    args = sys.argv[1:]
    target = os.environ.get("HYCHAT_SUITE_TARGET", "hychat")
    table = upstream.llama_server_flags(upstream.suite_root() / upstream.ARG_CPP)
    model = model_path()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if target == "native":
        default = Path.home() / ".cache" / "llama-tools" / upstream.version() / "bin" / "llama-server"
        binary = os.environ.get("HYCHAT_SUITE_LLAMA_SERVER", str(default))
        kept = [arg for flag, _, values in split_args(args, table) for arg in (flag, *values)]
        command = [binary, *kept, "--model", model]
    elif target == "hychat":
        kept, dropped = hychat_command(args, table, hychat_flags())
        # llama-server serves /metrics only with --metrics; hychat serves it unless --no-metrics.
        if "--metrics" not in args:
            kept.append("--no-metrics")
        if dropped:
            print(f"llama-server shim: hychat serve lacks, dropped: {' '.join(dropped)}", file=sys.stderr, flush=True)
        env["HYCHAT_API_KEY"] = ""  # none unless --api-key
        # llama-server's defaults where hychat's are stricter (README: "A drop-in for llama-server"): any
        # model name is the loaded model, unknown fields are ignored, any origin may call it.
        env.update(HYCHAT_UNKNOWN_MODEL="default", HYCHAT_UNKNOWN_FIELDS="ignore")
        if "--cors-origins" not in kept:
            kept += ["--cors-origins", "*"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [venv_python(), "-m", "app", "serve", *kept, "--model", model]
    else:
        sys.exit(f"llama-server shim: HYCHAT_SUITE_TARGET is {target!r}, not native or hychat")
    print(f"llama-server shim: {' '.join(command)}", file=sys.stderr, flush=True)
    os.execve(command[0], command, env)
