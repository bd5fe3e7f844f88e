"""The host prompt cache's disk tier: KV states that left the RAM cache, one file each in a bounded
folder, so a conversation that returns after the RAM filled up, or after a restart, still restores
its history. A file appears whole or not at all (written aside, then renamed), is checked when read
(its size and CRC-32), and one that is damaged is ignored and removed.

A file: MAGIC, the header's length (4 bytes, little-endian), the header (JSON: the tokens, the
adapters as stable names, the data's size and CRC-32), then the state's bytes. JSON and not pickle:
a file in the folder is data, never code. One folder per model and KV layout (the caller names it),
so a state only ever meets the model it was computed with; llama.cpp refuses one that still does
not fit, and the engine then reads the prompt whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.engine.admission import common_prefix

log = logging.getLogger(__name__)

MAGIC = b"hychat-kv-state 1\n"
SUFFIX = ".state"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class StateFile:
    path: Path
    tokens: tuple[int, ...]
    adapters: tuple  # stable names of the adapter set: ((file identity, scale), ...)
    size: int  # the data's bytes
    crc32: int  # the data's
    bytes: int  # the file's


class StateFiles:
    def __init__(self, folder: Path, budget_bytes: int):
        self.folder, self.budget_bytes = folder, budget_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._files: OrderedDict[Path, StateFile] = OrderedDict()  # the least recently used first
        self.used_bytes = 0
        for path in folder.glob("*.tmp"):  # a write cut short by a crash
            path.unlink(missing_ok=True)
        for path in sorted(folder.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime_ns):
            if (entry := _read_header(path)) is not None:
                self._index(entry)
        self._shrink(0)

    def __len__(self) -> int:
        return len(self._files)

    def write(self, tokens: tuple[int, ...], adapters: tuple, data: mmap.mmap | bytearray) -> None:
        """Keeps a state, replacing the earlier states of the same conversation and dropping the least
        recently used to stay within the bound; one larger than the whole bound is not kept."""
        self.drop_prefixes(tokens, adapters)
        crc = zlib.crc32(data)
        header = json.dumps({"tokens": tokens, "adapters": adapters, "size": len(data), "crc32": crc}).encode()
        head = MAGIC + _LENGTH.pack(len(header)) + header
        if len(head) + len(data) > self.budget_bytes:
            return
        self._shrink(len(head) + len(data))
        path = self.folder / (hashlib.sha256(header).hexdigest()[:32] + SUFFIX)
        part = path.with_suffix(".tmp")
        try:
            with open(part, "wb") as f:
                f.write(head)
                f.write(data)
            os.replace(part, path)
        except OSError as error:  # a full or read-only disk costs this state, never the request
            log.warning("a prompt state could not be written to %s: %s", self.folder, error)
            part.unlink(missing_ok=True)
            return
        self._index(StateFile(path, tokens, adapters, len(data), crc, len(head) + len(data)))

    def best(self, prompt: Sequence[int], adapters: tuple) -> tuple[StateFile | None, int]:
        """The file sharing the longest prefix with `prompt` (computed with `adapters`), and how long."""
        best, best_len = None, 0
        for entry in self._files.values():
            if entry.adapters == adapters and (n := common_prefix(entry.tokens, prompt)) > best_len:
                best, best_len = entry, n
        return best, best_len

    def take(self, entry: StateFile) -> mmap.mmap | None:
        """The state's bytes, its file removed (they go back to RAM); None, and the file removed, if
        it is damaged."""
        self._drop(entry.path)
        try:
            with open(entry.path, "rb") as f:
                f.seek(entry.bytes - entry.size)
                data = mmap.mmap(-1, entry.size)
                if f.readinto(data) != entry.size or f.read(1) or zlib.crc32(data) != entry.crc32:
                    raise ValueError("its data does not match its header")
            return data
        except (OSError, ValueError) as error:
            log.warning("a damaged prompt state file was removed (%s): %s", entry.path.name, error)
            return None
        finally:
            entry.path.unlink(missing_ok=True)

    def drop_prefixes(self, tokens: tuple[int, ...], adapters: tuple) -> None:
        """Removes the files of the same conversation, earlier (a newer state holds all they hold)."""
        for entry in list(self._files.values()):
            if entry.adapters == adapters and tokens[: len(entry.tokens)] == entry.tokens:
                self._drop(entry.path)
                entry.path.unlink(missing_ok=True)

    def _index(self, entry: StateFile) -> None:
        self._files[entry.path] = entry
        self.used_bytes += entry.bytes

    def _drop(self, path: Path) -> None:
        self.used_bytes -= self._files.pop(path).bytes

    def _shrink(self, room: int) -> None:
        while self._files and self.used_bytes + room > self.budget_bytes:
            path = next(iter(self._files))
            self._drop(path)
            path.unlink(missing_ok=True)


def _read_header(path: Path) -> StateFile | None:
    """A file's entry from its header; None, and the file removed, if it is not one of ours whole."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a hychat KV state file")
            (length,) = _LENGTH.unpack(f.read(_LENGTH.size))
            header = json.loads(f.read(length))
        tokens = tuple(int(t) for t in header["tokens"])
        adapters = tuple((str(name), float(scale)) for name, scale in header["adapters"])
        size, crc, total = int(header["size"]), int(header["crc32"]), path.stat().st_size
        if total != len(MAGIC) + _LENGTH.size + length + size:
            raise ValueError(f"{total} bytes where its header says {len(MAGIC) + _LENGTH.size + length + size}")
        return StateFile(path, tokens, adapters, size, crc, total)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        log.warning("a damaged prompt state file was removed (%s): %s", path.name, error)
        path.unlink(missing_ok=True)
        return None
