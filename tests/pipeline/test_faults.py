"""Pipeline steps stopped mid-way, through the `hychat` entry point as a user runs them: Ctrl-C
(SIGINT), SIGKILL, a full disk (a small tmpfs) and the file size limit (RLIMIT_FSIZE). Every time:
no output, no temporary left (but a SIGKILLed writer's, which the next write clears), inputs
byte-identical, one clear line on stderr and no traceback.

Nothing here is timed: a step is signalled once its hidden temporary exists and grows, however
slow the machine.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from app.pipeline.files import sha256
from app.pipeline.quantize import quantize
from tests.conftest import REPO

HYCHAT = Path(sys.executable).with_name("hychat")
INTERRUPTED = "Error: interrupted; no partial output was left"
# Of the types, k-quants compute longest per byte written: the widest window to catch quantize mid-way.
MIDWAY = ("--type", "q4_k_m")
SAFETY_S = 900  # a hung step fails its test instead of hanging the run; no assertion is on time


@pytest.fixture(scope="module")
def f16(model_path, tmp_path_factory) -> Path:
    """The embedded SmolLM2 (Q4_1) as f16, 258 MiB: quantizing it takes long enough to catch mid-way."""
    out = tmp_path_factory.mktemp("f16") / "smol.f16.gguf"
    return quantize(Path(model_path), out, "f16", allow_requantize=True).path


class Step:
    """One `hychat` command in a subprocess. Its stderr goes to a file: a pipe nobody reads while
    we wait would fill up with the converter's progress bar and stall it."""

    def __init__(self, logs: Path, *args: str, preexec_fn: Callable[[], None] | None = None):
        logs.mkdir(exist_ok=True)
        self.log = logs / f"stderr-{len(list(logs.iterdir()))}.txt"
        with self.log.open("w") as stderr:
            command = [str(HYCHAT), *args]
            self.proc = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=preexec_fn,
                start_new_session=True,
            )  # fmt: skip

    def ctrl_c(self) -> None:
        """SIGINT to the step's whole process group, as a terminal sends it (the converter too)."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait_until_writing(self, out: Path) -> None:
        """Returns once the hidden temporary of `out` exists and has grown: the step is mid-way."""
        first = 0
        deadline = time.monotonic() + SAFETY_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            size = _temporary_bytes(out)
            if first and size > first:
                return
            first = first or size
            time.sleep(0.005)
        if self.proc.poll() is None:  # hung: not left running after its test
            os.killpg(self.proc.pid, signal.SIGKILL)
        pytest.fail(f"the step ended (exit {self.proc.poll()}) before it was caught writing:\n{self.stderr()[-2000:]}")

    def finish(self) -> int:
        return self.proc.wait(timeout=SAFETY_S)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def test_ctrl_c_during_quantize_exits_130_and_leaves_nothing(f16, tmp_path):
    before = sha256(f16)
    out = tmp_path / "out"
    out.mkdir()
    step = Step(tmp_path / "logs", "quantize", str(f16), str(out / "smol.q4_k_m.gguf"), *MIDWAY)
    step.wait_until_writing(out / "smol.q4_k_m.gguf")
    step.ctrl_c()
    assert step.finish() == 130
    _assert_one_line(step.stderr(), INTERRUPTED)
    assert list(out.iterdir()) == []
    assert sha256(f16) == before


def test_sigkill_during_quantize_leaves_a_temporary_the_next_run_clears(f16, tmp_path):
    before = sha256(f16)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "smol.q4_k_m.gguf"
    step = Step(tmp_path / "logs", "quantize", str(f16), str(target), *MIDWAY)
    step.wait_until_writing(target)
    step.proc.kill()
    step.finish()  # reaped: its PID no longer exists
    assert not target.exists()
    assert _temporaries(target), "a writer killed outright cannot clean up"
    live = out / f".{target.name}.partial-{os.getpid()}"  # a live writer's (this test's PID): kept
    live.write_bytes(b"another run's output")
    again = Step(tmp_path / "logs", "quantize", str(f16), str(target), *MIDWAY)
    assert again.finish() == 0, again.stderr()[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [live.name, target.name]
    assert sha256(f16) == before


def test_ctrl_c_during_convert_stops_the_converter_and_leaves_nothing(smol_checkpoint, tmp_path):
    before = _fingerprint(smol_checkpoint)
    out = tmp_path / "out"
    out.mkdir()
    step = Step(tmp_path / "logs", "convert", str(smol_checkpoint), "--out", str(out / "smol.f16.gguf"))
    step.wait_until_writing(out / "smol.f16.gguf")
    converter = psutil.Process(step.proc.pid).children(recursive=True)
    assert converter, "the converter runs in a child python"
    step.ctrl_c()
    assert step.finish() == 130
    _assert_one_line(step.stderr(), INTERRUPTED)
    _assert_gone(converter)
    assert list(out.iterdir()) == []
    assert _fingerprint(smol_checkpoint) == before


def test_sigkill_during_convert_kills_the_converter_too(smol_checkpoint, tmp_path):
    before = _fingerprint(smol_checkpoint)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "smol.f16.gguf"
    step = Step(tmp_path / "logs", "convert", str(smol_checkpoint), "--out", str(target))
    step.wait_until_writing(target)
    converter = psutil.Process(step.proc.pid).children(recursive=True)
    assert converter, "the converter runs in a child python"
    for process in converter:  # stopped, only dying with its parent ends it, not EPIPE at its next log line
        process.suspend()
    step.proc.kill()
    step.finish()
    _assert_gone(converter)  # it does not write on with nobody to rename or remove its file
    assert not target.exists()
    again = Step(tmp_path / "logs", "convert", str(smol_checkpoint), "--out", str(target))
    assert again.finish() == 0, again.stderr()[-2000:]
    assert [p.name for p in out.iterdir()] == [target.name]  # the dead run's temporary is gone
    assert _fingerprint(smol_checkpoint) == before


@pytest.mark.parametrize("command", ["quantize", "convert"])
def test_the_file_size_limit_stops_a_step_with_a_clear_message(command, request, tmp_path):
    source = request.getfixturevalue("f16" if command == "quantize" else "smol_checkpoint")
    before = _fingerprint(source)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "smol.gguf"
    args = [str(source), "--out", str(target)] if command == "convert" else [str(source), str(target), "--type", "q8_0"]
    step = Step(tmp_path / "logs", command, *args, preexec_fn=_file_size_limit(20 << 20))
    assert step.finish() == 1
    _assert_one_line(step.stderr(), f"Error: file size limit reached while writing {target}")
    assert list(out.iterdir()) == []
    assert _fingerprint(source) == before


def test_a_disk_too_small_for_the_input_is_refused_before_writing(f16, tmpfs, tmp_path):
    disk = tmpfs(20 << 20)
    target = disk / "smol.q4_k_m.gguf"
    step = Step(tmp_path / "logs", "quantize", str(f16), str(target), *MIDWAY)
    assert step.finish() == 1
    _assert_one_line(step.stderr(), f"Error: {disk}: not enough space, {f16.stat().st_size} bytes needed")
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_up_mid_way_stops_quantize_with_a_clear_message(f16, tmpfs, tmp_path):
    before = sha256(f16)
    disk = tmpfs(f16.stat().st_size + (16 << 20))  # room for the input's size: the up-front check passes
    target = disk / "smol.q4_k_m.gguf"
    step = Step(tmp_path / "logs", "quantize", str(f16), str(target), *MIDWAY)
    step.wait_until_writing(target)
    step.proc.send_signal(signal.SIGSTOP)  # another program takes the rest of the disk meanwhile
    _fill(disk / "filler")
    step.proc.send_signal(signal.SIGCONT)
    assert step.finish() == 1
    _assert_one_line(step.stderr(), f"Error: no space left on device while writing {target}")
    assert [p.name for p in disk.iterdir()] == ["filler"]
    assert sha256(f16) == before


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given size; skips where mounting is not allowed (needs CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size_bytes: int) -> Path:
        folder = tmp_path / f"tmpfs-{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()} (needs root or CAP_SYS_ADMIN)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _file_size_limit(limit_bytes: int) -> Callable[[], None]:
    def before_exec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return before_exec


def _fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 20))
        except OSError as error:
            assert error.errno == errno.ENOSPC
    with path.open("ab", buffering=0) as f:  # the last partial page too
        try:
            while True:
                f.write(b"\0")
        except OSError as error:
            assert error.errno == errno.ENOSPC


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")]


def _temporary_bytes(out: Path) -> int:
    """Bytes written so far under `out`'s temporaries (llama.cpp's quantizer writes in a folder)."""
    total = 0
    for path in _temporaries(out):
        try:
            files = list(path.rglob("*")) if path.is_dir() else [path]
            total += sum(f.stat().st_size for f in files if f.is_file())
        except FileNotFoundError:
            pass  # removed while we looked
    return total


def _assert_one_line(stderr: str, message: str) -> None:
    """The step's error is stderr's last line, said once, with no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(message), stderr[-3000:]
    assert stderr.count(message) == 1


def _assert_gone(processes: list[psutil.Process]) -> None:
    """Each has exited (a zombie waiting for init to reap it has too); survivors are killed after."""
    deadline = time.monotonic() + 60  # SIGKILL takes effect at once; this only bounds a failure
    while time.monotonic() < deadline and not all(_exited(p) for p in processes):
        time.sleep(0.05)
    survivors = [p for p in processes if not _exited(p)]
    for process in survivors:
        process.kill()
    assert not survivors


def _exited(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _fingerprint(path: Path) -> dict[str, str]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f.relative_to(path.parent)): sha256(f) for f in files if f.is_file()}
