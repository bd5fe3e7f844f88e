"""The registry's per-model request defaults: the settings', with a library model's presets over them;
the keywords it loads models with. Nothing loads: the models are a tiny checkpoint folder (empty
weights) and a peft adapter of it, which the library lists from their files alone, or a backend that
records its `load_model` calls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from app.services.llamacpp_service import LlamaCppBackend
from app.services.registry import Registry
from app.types import Speculation
from config.settings import Settings


def test_a_library_models_presets_replace_the_servers_defaults(tmp_path: Path):
    models = tmp_path / "models"
    (models / "ckpt").mkdir(parents=True)
    (models / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (models / "ckpt" / "model.safetensors").write_bytes(b"")
    (models / "lora").mkdir()
    (models / "lora" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "ckpt"}))
    (models / "lora" / "adapter_model.safetensors").write_bytes(b"")
    presets = tmp_path / "presets.toml"
    presets.write_text(
        "[ckpt]\naliases = ['base']\ntemperature = 0.2\ntop_k = 5\nthink = false\nmax_tokens = 100000\n"
        "[lora]\ntemperature = 0.9\nseed = 7\n"
    )
    settings = Settings(
        _env_file=None, model_dirs=str(models), models_presets=presets, default_temperature=0.5,
        default_top_p=0.8, think=True, max_tokens_limit=4096, spec_type="ngram-mod", spec_draft_n_max=8,
    )  # fmt: skip
    registry = Registry(settings, {"llamacpp": LlamaCppBackend()})
    own = settings.chat_defaults()
    # The server's speculative decoding is in every model's defaults (llama-server's ngram-mod: ngram).
    spec = Speculation(type="ngram", n_max=8)
    own["defaults"]["speculative"] = spec

    for name in (None, "default", "llamacpp", "not-in-the-library"):
        assert registry.chat_defaults(name) == own and registry.sampling_defaults(name) == own["defaults"]
    base = registry.chat_defaults("base")  # by its alias
    assert base == own | {"think": False, "defaults": {"temperature": 0.2, "top_p": 0.8, "top_k": 5,
                                                       "max_new_tokens": 4096, "speculative": spec}}  # fmt: skip
    # The adapter: its own values over its base's.
    assert registry.sampling_defaults("lora") == {"temperature": 0.9, "top_p": 0.8, "top_k": 5,
                                                  "max_new_tokens": 4096, "seed": 7, "speculative": spec}  # fmt: skip
    assert registry.chat_defaults("lora")["think"] is False
    # A presets file that no longer parses: the server's own (resolving the model says what is wrong).
    presets.write_text("[ckpt]\ntemperature = 'hot'\n")
    assert registry.chat_defaults("base") == own


class Recording(LlamaCppBackend):
    """A llama.cpp backend that records the `load_model` calls it gets (its library siblings too) and
    loads nothing."""

    def __init__(self, loads: list[tuple[str, dict[str, Any]]]):
        super().__init__()
        self.loads = loads

    def load_model(self, model_path: str, **keywords: Any) -> None:  # type: ignore[override]
        self.loads.append((model_path, keywords))

    def sibling(self) -> Recording:
        return Recording(self.loads)


def test_only_the_configured_model_loads_with_the_draft_model_and_its_memory_counts(tmp_path: Path, model_path: str):
    configured, draft = tmp_path / "main.gguf", tmp_path / "draft.gguf"
    configured.write_bytes(b"\0" * 1000)  # outside the library: its estimate is its file's size
    draft.write_bytes(b"\0" * 300)
    models = tmp_path / "models"
    models.mkdir()
    (models / "library.gguf").symlink_to(model_path)

    def registry(**given: Any) -> tuple[Registry, list[tuple[str, dict[str, Any]]]]:
        settings = Settings(_env_file=None, llamacpp_model_path=str(configured), model_dirs=str(models), **given)
        loads: list[tuple[str, dict[str, Any]]] = []
        return Registry(settings, {"llamacpp": Recording(loads)}), loads

    with_draft, loads = registry(spec_draft_model=str(draft))
    assert with_draft.settings.spec_type == "draft"  # -md without --spec-type: draft
    with_draft.load_configured()
    assert loads[-1] == (str(configured), loads[-1][1]) and loads[-1][1]["draft_model_path"] == str(draft)
    # Another file in its place (POST /admin/reload): without it, as without the configured adapter.
    with_draft.load(with_draft.backends["llamacpp"], str(models / "library.gguf"), with_lora=False)
    assert "draft_model_path" not in loads[-1][1]
    # Loaded on demand: the configured model with the draft's file in its estimate, a library model without.
    asyncio.run(with_draft.resolve("default"))
    assert "draft_model_path" in loads[-1][1] and with_draft.pool.held["llamacpp"].estimate_bytes == 1000 + 300
    asyncio.run(with_draft.resolve("library.gguf"))
    assert loads[-1][0] == str((models / "library.gguf").resolve()) and "draft_model_path" not in loads[-1][1]
    library_estimate = with_draft.pool.held["library.gguf"].estimate_bytes

    plain, loads = registry()
    plain.load_configured()
    assert "draft_model_path" not in loads[-1][1]
    asyncio.run(plain.resolve("default"))
    asyncio.run(plain.resolve("library.gguf"))
    assert "draft_model_path" not in loads[-2][1] and "draft_model_path" not in loads[-1][1]
    assert plain.pool.held["llamacpp"].estimate_bytes == 1000
    assert plain.pool.held["library.gguf"].estimate_bytes == library_estimate
