"""A peft LoRA adapter as a GGUF adapter for llama.cpp (`hychat lora-to-gguf`), applied at run time
with `lora_path` / `lora_scale` instead of re-merging."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from app.modelfiles.adapter import low_rank_on_embeddings, tensor_names, tied_embeddings, whole_tensors
from app.modelfiles.gguf import read_gguf
from app.pipeline.files import PipelineError, atomic_output
from app.pipeline.llama_converter import converter_dir, run_llama_script

MERGE_INSTEAD = "merge it with `hychat merge-lora` and convert the merged checkpoint with `hychat convert`"


def lora_to_gguf(base: Path, adapter: Path, out: Path, cache_dir: Path, force: bool = False) -> Path:
    base, adapter = Path(base), Path(adapter)
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise PipelineError(f"{adapter}: not a peft LoRA adapter folder (no adapter_config.json)")
    config = json.loads(config_path.read_text())
    if config.get("use_dora"):
        raise PipelineError(f"{adapter}: DoRA adapters cannot run in llama.cpp; merge it with `hychat merge-lora`")
    _refuse_what_llama_cpp_cannot_apply(base, adapter)
    folder = converter_dir(cache_dir)
    with tempfile.TemporaryDirectory() as scratch, atomic_output(out, force=force, inputs=(base, adapter)) as partial:
        source = _rslora_as_lora(adapter, config, Path(scratch)) if config.get("use_rslora") else adapter
        run_llama_script(
            folder, "convert_lora_to_gguf.py", [str(source), "--base", str(base), "--outfile", str(partial)], None
        )
        read_gguf(partial)
    return Path(out)


def _refuse_what_llama_cpp_cannot_apply(base: Path, adapter: Path) -> None:
    """Asked up front: the converter would stop late with a bare error, or (a LoRA on tied
    embed_tokens) write an adapter that aborts the whole llama.cpp process at its first decode."""
    names = tensor_names(adapter)
    whole = whole_tensors(names)
    if whole:
        raise PipelineError(
            f"{adapter}: the adapter carries whole weights ({', '.join(whole[:3])}), not only LoRA pairs, as "
            "peft saves for modules_to_save or after tokens were added; a GGUF adapter holds LoRA pairs only. "
            f"To run it in llama.cpp, {MERGE_INSTEAD}."
        )
    on_embeddings = low_rank_on_embeddings(names)
    if on_embeddings and tied_embeddings(base):
        raise PipelineError(
            f"{adapter}: the adapter has a LoRA on {' and '.join(on_embeddings)}, but {base} ties lm_head to "
            "the input embeddings (tie_word_embeddings): its GGUF holds one matrix for both, and llama.cpp "
            f"cannot apply a LoRA to one side of it. To run it in llama.cpp, {MERGE_INSTEAD}."
        )


def _rslora_as_lora(adapter: Path, config: dict, scratch: Path) -> Path:
    """llama.cpp scales an adapter by alpha/rank; rsLoRA means alpha/sqrt(rank). The same scale as a
    plain LoRA: alpha * sqrt(rank). Written to a copy of the config beside links to the weights."""
    rank = config["r"]
    copy = dict(config, lora_alpha=config["lora_alpha"] * math.sqrt(rank), use_rslora=False)
    for item in adapter.iterdir():
        if item.name != "adapter_config.json":
            os.symlink(item.absolute(), scratch / item.name)
    (scratch / "adapter_config.json").write_text(json.dumps(copy))
    return scratch
