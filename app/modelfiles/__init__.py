"""Readers of files on disk: GGUF headers and metadata, LoRA adapters."""
