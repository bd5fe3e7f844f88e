"""Merge a peft LoRA adapter into its base checkpoint (`hychat merge-lora`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from app.pipeline.files import PipelineError, atomic_output

# Written by save_pretrained; everything else of the base (tokenizer files, tokenizer code such as
# Hunyuan-7B's tokenization_hy.py + hy.tiktoken, chat template, generation config) is copied over.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.index.json", "*.pt", "*.pth")


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    size_bytes: int


def merge_lora(base: Path, adapter: Path, out: Path, dtype: str = "auto", force: bool = False) -> MergeResult:
    import torch
    import transformers

    from app.services.model_service import apply_lora

    base, adapter = Path(base), Path(adapter)
    if not (base / "config.json").is_file():
        raise PipelineError(f"{base}: not a Hugging Face checkpoint folder (no config.json)")
    weights = sum(f.stat().st_size for pattern in WEIGHT_PATTERNS for f in base.glob(pattern))
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    with atomic_output(out, force=force, need_bytes=weights, inputs=(base, adapter)) as partial:
        model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, local_files_only=True)
        merged = apply_lora(model, adapter, merge=True)
        merged.save_pretrained(partial, safe_serialization=True)
        _copy_base_files(base, partial)
        saved_dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    size = sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))
    return MergeResult(Path(out), saved_dtype, size)


def _copy_base_files(base: Path, out: Path) -> None:
    weights = {f for pattern in WEIGHT_PATTERNS for f in base.glob(pattern)}
    for source in base.iterdir():
        target = out / source.name
        if source in weights or target.exists() or source.name.startswith("."):
            continue
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
