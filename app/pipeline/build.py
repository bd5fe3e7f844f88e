"""Every step from checkpoint (and adapter) to quantized GGUFs, with a manifest (`hychat build`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from app.pipeline.files import atomic_output, sha256
from app.pipeline.hf_to_gguf import convert
from app.pipeline.inspect import inspect_gguf
from app.pipeline.merge import merge_lora
from app.pipeline.quality import QualityReport, compare_quality
from app.pipeline.quantize import quantize


@dataclass
class BuiltFile:
    path: str
    type: str
    size_bytes: int
    bits_per_weight: float
    loads: bool
    sha256: str
    quality: QualityReport | None = None


def build(
    base: Path,
    out_dir: Path,
    cache_dir: Path,
    quants: list[str],
    adapter: Path | None = None,
    outtype: str = "f16",
    vocab_pre: str | None = None,
    imatrix: Path | None = None,
    evaluate: bool = True,
    force: bool = False,
    progress=print,  # noqa: ANN001 - a callable taking one line
) -> list[BuiltFile]:
    out_dir = Path(out_dir)
    name = Path(base).name
    source = Path(base)
    if adapter:
        progress(f"merging {adapter} into {base}")
        source = merge_lora(base, adapter, out_dir / f"{name}-merged", force=force).path
    reference = out_dir / f"{name}.{outtype}.gguf"
    progress(f"converting {source} to {reference.name}")
    convert(source, reference, cache_dir, outtype=outtype, vocab_pre=vocab_pre, force=force)
    built = [_describe(reference, outtype, None)]
    for quant in quants:
        target = out_dir / f"{name}.{quant}.gguf"
        progress(f"quantizing to {target.name}")
        quantize(reference, target, quant, force=force, imatrix=imatrix)
        built.append(_describe(target, quant, compare_quality(target, reference) if evaluate else None))
    manifest = {"base": str(base), "adapter": str(adapter) if adapter else None, "files": [asdict(b) for b in built]}
    with atomic_output(out_dir / "manifest.json", force=True) as partial:
        partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return built


def _describe(path: Path, kind: str, quality: QualityReport | None) -> BuiltFile:
    import llama_cpp

    report = inspect_gguf(path)
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False)
        loads = bool(llm.tokenize(b"hello")) and llm.n_vocab() > 0
        del llm
    except ValueError:
        loads = False
    return BuiltFile(
        str(path), kind, report.header.file_size, round(report.bits_per_weight, 2), loads, sha256(path), quality
    )
