"""A peft LoRA adapter as a GGUF adapter for llama.cpp (`hychat lora-to-gguf`), applied at run time
with `lora_path` / `lora_scale` instead of re-merging."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from app.pipeline.converter import converter_dir, run_llama_script
from app.pipeline.files import PipelineError, atomic_output
from app.services.gguf_file import read_gguf


def lora_to_gguf(base: Path, adapter: Path, out: Path, cache_dir: Path, force: bool = False) -> Path:
    base, adapter = Path(base), Path(adapter)
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise PipelineError(f"{adapter}: not a peft LoRA adapter folder (no adapter_config.json)")
    config = json.loads(config_path.read_text())
    if config.get("use_dora"):
        raise PipelineError(f"{adapter}: DoRA adapters cannot run in llama.cpp; merge it with `hychat merge-lora`")
    folder = converter_dir(cache_dir)
    with tempfile.TemporaryDirectory() as scratch, atomic_output(out, force=force, inputs=(base, adapter)) as partial:
        source = _rslora_as_lora(adapter, config, Path(scratch)) if config.get("use_rslora") else adapter
        run_llama_script(
            folder, "convert_lora_to_gguf.py", [str(source), "--base", str(base), "--outfile", str(partial)], None
        )
        read_gguf(partial)
    return Path(out)


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
