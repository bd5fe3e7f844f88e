"""Checkpoints shared by the pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol_checkpoint(model_path, tmp_path_factory) -> Path:
    """SmolLM2 from the embedded GGUF, saved by transformers as a Hugging Face checkpoint."""
    import torch
    import transformers

    gguf = Path(model_path)
    out = tmp_path_factory.mktemp("smollm2")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a fresh model with the same weights saves fine.
    model = transformers.AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)  # the converter would take the weights for pre-quantized
    (out / "config.json").write_text(json.dumps(config))
    return out
