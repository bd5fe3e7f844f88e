"""llama.cpp's server test suite, from the llama-cpp-python source distribution at the installed version.

The sdist vendors llama.cpp; its `tools/server/tests` (utils.py, conftest.py, unit/) runs llama-server
over HTTP. The first use fetches the sdist with pip (app.pipeline.llama_converter.llama_cpp_sources) and
keeps only what the suite reads in the cache folder; nothing of it is copied into this repository.
"""

from __future__ import annotations

import importlib.metadata
import re
from functools import cache
from pathlib import Path

PACKAGE = "llama-cpp-python"
# The suite, the chat templates its tests name as ../../../models/templates/X.jinja, and the
# llama-server flag table (which flags take a value, which names are aliases).
NEEDED = ("tools/server/tests", "models/templates", "common/arg.cpp")
TESTS = "tools/server/tests"
ARG_CPP = "common/arg.cpp"


def version() -> str:
    return importlib.metadata.version(PACKAGE)


def cache_dir() -> Path:
    try:
        from config.settings import Settings

        return Path(Settings().cache_dir)
    except Exception:  # settings that do not validate here must not stop a test harness
        return Path.home() / ".cache" / "hychat"


def suite_root() -> Path:
    """The folder holding tools/server/tests, models/templates and common/arg.cpp; fetched once."""
    from app.pipeline.llama_converter import llama_cpp_sources

    return llama_cpp_sources(cache_dir(), "server-tests", NEEDED, f"{TESTS}/utils.py")


@cache
def llama_server_flags(arg_cpp: Path) -> dict[str, tuple[tuple[str, ...], int]]:
    """Each llama-server flag -> (its names, how many values follow it), from common/arg.cpp.

    Every option is `common_arg({names}, [{negated names},] [hints,] help, [](common_params & p[, T value...]) ...)`:
    the handler's parameters after the first are the values; a `bool` one is a --x/--no-x pair, with none.
    """
    text = Path(arg_cpp).read_text()
    handler = re.compile(r"\[[^\]]*\]\s*\(([^)]*)\)")
    flags: dict[str, tuple[tuple[str, ...], int]] = {}
    for match in re.finditer(r"common_arg\(\s*((?:\{[^{}]*\}\s*,\s*)+)", text):
        params = handler.search(text, match.end()).group(1).split(",")[1:]
        arity = 0 if not params or "bool" in params[0] else len(params)
        for group in re.findall(r"\{([^{}]*)\}", match.group(1)):
            names = tuple(re.findall(r'"(-[^"]+)"', group))
            for name in names:
                flags[name] = (names, arity)
    return flags
