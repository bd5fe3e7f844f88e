"""What a GGUF file holds, and whether it is whole (`hychat inspect`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from app.errors import ModelFileError
from app.modelfiles.gguf import GGUFHeader, file_type_name, read_gguf, type_name

SPECIAL_TOKEN_KEYS = ("bos", "eos", "eot", "eom", "padding", "unknown")


@dataclass
class GGUFReport:
    path: Path
    ok: bool
    problem: str | None = None
    header: GGUFHeader | None = None
    special_tokens: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(prod(t.shape) for t in self.header.tensors) if self.header else 0

    @property
    def quantization_mix(self) -> dict[str, tuple[int, int]]:
        """ggml type name -> (tensors, bytes)."""
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for t in self.header.tensors if self.header else ():
            counts[type_name(t.ggml_type)] += 1
            sizes[type_name(t.ggml_type)] += t.n_bytes
        return {name: (counts[name], sizes[name]) for name in sorted(counts, key=lambda n: -sizes[n])}

    @property
    def file_type(self) -> str:
        """What llama.cpp calls the file's format ("Q4_K_M"); the type holding most bytes without one."""
        name = file_type_name(self.metadata("general.file_type"))
        return (name or next(iter(self.quantization_mix), "unknown")).upper()

    @property
    def bits_per_weight(self) -> float:
        data = sum(t.n_bytes for t in self.header.tensors) if self.header else 0
        return 8 * data / self.n_params if self.n_params else 0.0

    def metadata(self, key: str) -> Any:
        return self.header.metadata.get(key) if self.header else None


def inspect_gguf(path: str | Path) -> GGUFReport:
    """Reads the header and checks every tensor's extent; a damaged file gives ok=False and the reason."""
    path = Path(path)
    try:
        header = read_gguf(path)
    except ModelFileError as error:
        return GGUFReport(path, ok=False, problem=error.problem)
    return GGUFReport(path, ok=True, header=header, special_tokens=_special_tokens(path, header))


def _special_tokens(path: Path, header: GGUFHeader) -> dict[str, tuple[int, str]]:
    ids = {k: header.metadata.get(f"tokenizer.ggml.{k}_token_id") for k in SPECIAL_TOKEN_KEYS}
    ids = {k: v for k, v in ids.items() if isinstance(v, int)}
    try:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        # verbose=False leaves llama.cpp's warning about a vocabulary-only context on stderr.
        with suppress_stdout_stderr(disable=False):
            vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    except (ImportError, ValueError):  # no runtime, or llama.cpp cannot read the vocabulary: ids only
        return {k: (v, "") for k, v in ids.items()}
    return {k: (v, vocab.detokenize([v], special=True).decode("utf-8", errors="replace")) for k, v in ids.items()}


def describe(report: GGUFReport) -> list[str]:
    """The lines `hychat inspect` prints."""
    if not report.ok:
        return [f"file          {report.path}", f"verdict       DAMAGED: {report.problem}"]
    h, mix = report.header, report.quantization_mix
    lines = [
        f"file          {report.path}",
        f"architecture  {h.architecture}    name: {report.metadata('general.name')}",
        f"parameters    {report.n_params:,}",
        f"size          {h.file_size:,} bytes ({report.bits_per_weight:.2f} bits per weight)",
        f"context       {h.arch_value('context_length')} tokens (trained)",
        f"layers        {h.arch_value('block_count')}, embedding {h.arch_value('embedding_length')}",
        f"tokenizer     {report.metadata('tokenizer.ggml.model')} / pre: {report.metadata('tokenizer.ggml.pre')}",
        "quantization  " + ", ".join(f"{n} x{c} ({b / 2**20:.1f} MiB)" for n, (c, b) in mix.items()),
    ]
    for key, (token, text) in report.special_tokens.items():
        lines.append(f"{key + ' token':<14}{token} {text!r}")
    template = report.metadata("tokenizer.chat_template")
    lines.append(
        f"chat template {'yes, ' + str(len(template)) + ' characters' if isinstance(template, str) else 'none'}"
    )
    lines.append(
        f"verdict       OK: header, metadata and {len(h.tensors)} tensors inside the file ({h.file_size:,} bytes)"
    )
    return lines
