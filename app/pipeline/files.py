"""Outputs that appear whole or not at all.

Every pipeline step writes under a temporary name beside the final path and renames it into place
only when the step succeeded; an exception, Ctrl-C or a full disk leaves nothing behind. Inputs are
never opened for writing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import HychatError


class PipelineError(HychatError):
    """A pipeline step cannot run or failed; the message says why and what to do."""

    status_code = 400
    code = "pipeline_error"


@contextmanager
def atomic_output(
    final: Path, force: bool = False, need_bytes: int = 0, inputs: tuple[Path, ...] = ()
) -> Iterator[Path]:
    """Yields a temporary path to write (a file or a folder); renames it to `final` on success."""
    final = Path(final).absolute()
    for source in inputs:
        source = Path(source).absolute()
        if final.is_relative_to(source):
            raise PipelineError(f"{final}: refusing to write into the input {source}")
    if final.exists() and not force:
        raise PipelineError(f"{final} exists; pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(final.parent).free
    if need_bytes > free:
        raise PipelineError(f"{final.parent}: {need_bytes} bytes needed, only {free} free")
    temporary = final.with_name(f".{final.name}.partial-{os.getpid()}")
    _remove(temporary)
    try:
        yield temporary
        if final.exists():
            _remove(final)
        os.replace(temporary, final)
    finally:
        _remove(temporary)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
