"""The registry's per-model request defaults: the settings', with a library model's presets over them.
Nothing loads: the models are a tiny checkpoint folder (empty weights) and a peft adapter of it, which
the library lists from their files alone."""

from __future__ import annotations

import json
from pathlib import Path

from app.services.llamacpp_service import LlamaCppBackend
from app.services.registry import Registry
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
        default_top_p=0.8, think=True, max_tokens_limit=4096,
    )  # fmt: skip
    registry = Registry(settings, {"llamacpp": LlamaCppBackend()})
    own = settings.chat_defaults()

    for name in (None, "default", "llamacpp", "not-in-the-library"):
        assert registry.chat_defaults(name) == own and registry.sampling_defaults(name) == own["defaults"]
    base = registry.chat_defaults("base")  # by its alias
    assert base == own | {"think": False, "defaults": {"temperature": 0.2, "top_p": 0.8, "top_k": 5,
                                                       "max_new_tokens": 4096}}  # fmt: skip
    # The adapter: its own values over its base's.
    assert registry.sampling_defaults("lora") == {"temperature": 0.9, "top_p": 0.8, "top_k": 5,
                                                  "max_new_tokens": 4096, "seed": 7}  # fmt: skip
    assert registry.chat_defaults("lora")["think"] is False
    # A presets file that no longer parses: the server's own (resolving the model says what is wrong).
    presets.write_text("[ckpt]\ntemperature = 'hot'\n")
    assert registry.chat_defaults("base") == own
