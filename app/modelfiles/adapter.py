"""What a peft adapter folder carries, read from its tensor names without loading any weights: the
pipeline decides from them what llama.cpp can apply, and a merge what it has to untie first."""

from __future__ import annotations

import json
from pathlib import Path

PREFIX = "base_model.model."
LOW_RANK = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
# The layers tie_word_embeddings shares one matrix between (the names peft and llama.cpp's converter use).
EMBEDDING_LAYERS = ("embed_tokens", "lm_head")


def tensor_names(adapter: Path) -> list[str]:
    safetensors = adapter / "adapter_model.safetensors"
    if safetensors.is_file():
        from safetensors import safe_open

        with safe_open(safetensors, framework="numpy") as f:  # reads the header only
            return list(f.keys())
    binary = adapter / "adapter_model.bin"
    if binary.is_file():
        import torch

        return list(torch.load(binary, map_location="cpu", weights_only=True, mmap=True))
    return []


def layer_of(name: str) -> str:
    """`base_model.model.model.embed_tokens.lora_embedding_A` -> `model.embed_tokens`."""
    name = name.removeprefix(PREFIX)
    for suffix in (*LOW_RANK, ".base_layer.weight", ".weight"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def whole_tensors(names: list[str]) -> list[str]:
    """Full weights rather than low-rank pairs (peft's modules_to_save, or embeddings saved after
    tokens were added). llama.cpp's convert_lora_to_gguf.py stops on these; it keeps norms and skips
    the copies of base layers peft stores beside an embedding LoRA."""
    kept = (*LOW_RANK, ".base_layer.weight")
    return [n for n in names if not n.endswith(kept) and "_layernorm" not in n and ".norm" not in n]


def low_rank_on_embeddings(names: list[str]) -> list[str]:
    """The embedding/output layers that carry a LoRA, e.g. ['lm_head']."""
    layers = {layer_of(n) for n in names if n.endswith(LOW_RANK)}
    return sorted(layer for layer in layers if layer.rsplit(".", 1)[-1] in EMBEDDING_LAYERS)


def tied_embeddings(base: Path) -> bool:
    """Whether the base shares one matrix between its input embeddings and lm_head, as
    transformers (and llama.cpp's converter, which asks AutoConfig) reads the checkpoint."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(base, local_files_only=True).to_dict()
    except (OSError, ValueError):  # an architecture transformers lacks: the converter reads the file too
        config = json.loads((base / "config.json").read_text())
    return bool(config.get("tie_word_embeddings", False))
