"""Outputs that appear whole or not at all.

Every pipeline step writes under a temporary name beside the final path, `.NAME.partial-PID`, and
renames it into place only when the step succeeded; an exception, Ctrl-C or a full disk leaves
nothing behind. A writer killed outright (SIGKILL, power loss) leaves its temporary, which the next
write of the same output removes once no process has that PID. Inputs are never opened for writing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import HychatError

# Below this much free space a failed write is taken for a full disk: writers fill it to the last block.
FULL_DISK_BYTES = 1 << 20


class PipelineError(HychatError):
    """A pipeline step cannot run or failed; the message says why and what to do."""

    status_code = 400
    code = "pipeline_error"


@contextmanager
def atomic_output(
    final: Path, force: bool = False, need_bytes: int = 0, inputs: tuple[Path, ...] = ()
) -> Iterator[Path]:
    """Yields a temporary path to write (a file or a folder); renames it to `final` on success.
    Other scratch files of the step belong beside it, named `temporary.name + "." + anything`."""
    final = Path(final).absolute()
    for source in inputs:
        source = Path(source).absolute()
        if final.is_relative_to(source):
            raise PipelineError(f"{final}: refusing to write into the input {source}")
    if final.exists() and not force:
        raise PipelineError(f"{final} exists; pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    free = shutil.disk_usage(final.parent).free
    if need_bytes > free:
        raise PipelineError(f"{final.parent}: not enough space, {need_bytes} bytes needed, only {free} free")
    temporary = final.with_name(f".{final.name}.partial-{os.getpid()}")
    _remove(temporary)
    try:
        yield temporary
        if final.exists():
            _remove(final)
        os.replace(temporary, final)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise PipelineError(_out_of_space(error.errno, final)) from None
    finally:
        _remove(temporary)


def check_space(written: Path) -> None:
    """After a writer that cannot report an errno failed (llama.cpp's C++ streams, the converter's
    child process): raises the OSError it most likely met when the cause was space, else returns."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = written.stat().st_size if written.is_file() else 0
    if limit != resource.RLIM_INFINITY and size >= limit:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(written))
    if shutil.disk_usage(written.parent).free < FULL_DISK_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(written))


def _out_of_space(code: int, final: Path) -> str:
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return f"file size limit reached while writing {final} (ulimit -f allows {limit} bytes); nothing was written"
    free = shutil.disk_usage(final.parent).free
    return f"no space left on device while writing {final} ({free} bytes free); nothing was written"


def _remove_stale(final: Path) -> None:
    # Only temporaries of processes that are gone: a live PID may be another run writing this output.
    pattern = re.compile(rf"\.{re.escape(final.name)}\.partial-(\d+)(\..+)?")
    for path in final.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and not _alive(int(match[1])):
            _remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sha256(path: Path) -> str:
    """Of a file's content, read in 1 MiB pieces (model files are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
