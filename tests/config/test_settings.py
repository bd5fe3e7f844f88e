import math
from dataclasses import asdict
from typing import get_args

import pytest

from app import types
from app.cpu import physical_cores
from config.settings import EMBEDDED_MODEL_FILE, Settings, SpecType, duration_s, embedded_model_path


def test_defaults_bind_to_localhost_without_an_api_key(monkeypatch):
    for name in ("HYCHAT_HOST", "HYCHAT_PORT", "HYCHAT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert (s.host, s.port, s.api_key) == ("127.0.0.1", 8000, None)


def test_llamacpp_config_has_the_users_keys_and_defaults():
    config = Settings(_env_file=None).llamacpp_config()
    assert config == {
        "enabled": True,
        "model_path": embedded_model_path(),
        "n_ctx": 2048,
        "n_threads": None,
        "n_gpu_layers": 0,
        "lora_path": None,
        "lora_scale": 1.0,
        "allow_amx": False,
        "n_batch": 512,
        "parallel": 4,
        "kv_unified": False,
        "queue_size": 32,
        "cache_type_k": "f16",
        "cache_type_v": "f16",
        "cache_ram_mib": 512,
        "cache_disk_dir": "",
        "cache_disk_mib": 4096,
        "spec_type": "ngram",
        "spec_draft_n_max": 64,
        "spec_draft_n_min": 0,
        "spec_ngram_size_n": 3,
        "spec_ngram_min_hits": 1,
        "spec_draft_model": None,
        "spec_draft_p_min": 0.0,
    }
    assert config["model_path"].endswith(EMBEDDED_MODEL_FILE)


def test_every_setting_is_overridden_by_its_environment_variable(monkeypatch, tmp_path):
    env = {
        "HYCHAT_HOST": "0.0.0.0",
        "HYCHAT_PORT": "9001",
        "HYCHAT_API_KEY": "secret",
        "HYCHAT_MAX_REQUEST_BYTES": "4096",
        "HYCHAT_MAX_TOKENS_LIMIT": "512",
        "HYCHAT_LOG_LEVEL": "debug",
        "HYCHAT_CACHE_DIR": str(tmp_path / "cache"),
        "HYCHAT_LLAMACPP_ENABLED": "false",
        "HYCHAT_LLAMACPP_MODEL_PATH": str(tmp_path / "m.gguf"),
        "HYCHAT_LLAMACPP_N_CTX": "4096",
        "HYCHAT_LLAMACPP_N_THREADS": "3",
        "HYCHAT_LLAMACPP_N_GPU_LAYERS": "-1",
        "HYCHAT_LLAMACPP_LORA_PATH": str(tmp_path / "lora.gguf"),
        "HYCHAT_LLAMACPP_LORA_SCALE": "0.5",
        "HYCHAT_LLAMACPP_ALLOW_AMX": "true",
        "HYCHAT_LLAMACPP_N_BATCH": "64",
        "HYCHAT_PARALLEL": "8",
        "HYCHAT_KV_UNIFIED": "true",
        "HYCHAT_QUEUE_SIZE": "0",
        "HYCHAT_CACHE_TYPE_K": "q8_0",
        "HYCHAT_CACHE_TYPE_V": "q4_0",
        "HYCHAT_CACHE_RAM_MIB": "0",
        "HYCHAT_CACHE_DISK_DIR": str(tmp_path / "states"),
        "HYCHAT_CACHE_DISK_MIB": "100",
        "HYCHAT_SPEC_TYPE": "ngram-mod",
        "HYCHAT_SPEC_DRAFT_N_MAX": "8",
        "HYCHAT_SPEC_DRAFT_N_MIN": "2",
        "HYCHAT_SPEC_NGRAM_SIZE_N": "4",
        "HYCHAT_SPEC_NGRAM_MIN_HITS": "2",
        "HYCHAT_SPEC_DRAFT_MODEL": str(tmp_path / "draft.gguf"),
        "HYCHAT_SPEC_DRAFT_P_MIN": "0.75",
        "HYCHAT_BACKEND": "pytorch",
        "HYCHAT_TORCH_ENABLED": "true",
        "HYCHAT_TORCH_MODEL_PATH": str(tmp_path / "hf"),
        "HYCHAT_TORCH_LORA_PATH": str(tmp_path / "lora"),
        "HYCHAT_TORCH_MERGE_LORA": "false",
        "HYCHAT_TORCH_DTYPE": "bfloat16",
        "HYCHAT_TORCH_N_CTX": "1024",
        "HYCHAT_TORCH_N_THREADS": "2",
        "HYCHAT_CORS_ORIGINS": "https://a.example, https://b.example",
        "HYCHAT_MODEL_DIRS": f"{tmp_path}/a,{tmp_path}/b",
        "HYCHAT_MODELS_PRESETS": str(tmp_path / "模型.toml"),
        "HYCHAT_MAX_LOADED_MODELS": "2",
        "HYCHAT_MODELS_MEMORY_MIB": "4096",
        "HYCHAT_KEEP_ALIVE": "1h30m",
        "HYCHAT_THINK": "false",
        "HYCHAT_REASONING_FORMAT": "none",
        "HYCHAT_CONTEXT_OVERFLOW": "truncate",
        "HYCHAT_RESPONSES_STORE_SIZE": "7",
        "HYCHAT_RESPONSES_STORE_TTL_S": "90",
        "HYCHAT_ALIAS": "小助手, gpt-4o",
        "HYCHAT_MODEL_TAGS": "chat,中文",
        "HYCHAT_CHAT_TEMPLATE": "llama3",
        "HYCHAT_JINJA": "false",
        "HYCHAT_DEFAULT_MAX_TOKENS": "64",
        "HYCHAT_DEFAULT_TEMPERATURE": "0.2",
        "HYCHAT_DEFAULT_TOP_K": "20",
        "HYCHAT_DEFAULT_TOP_P": "0.9",
        "HYCHAT_DEFAULT_MIN_P": "0.1",
        "HYCHAT_DEFAULT_REPETITION_PENALTY": "1.1",
        "HYCHAT_DEFAULT_SEED": "7",
        "HYCHAT_UNKNOWN_MODEL": "default",
        "HYCHAT_UNKNOWN_FIELDS": "ignore",
        "HYCHAT_ENDPOINT_SLOTS": "false",
        "HYCHAT_ENDPOINT_METRICS": "false",
        "HYCHAT_GCP_COMPAT": "true",
        "HYCHAT_GCP_PREDICT_ROUTE": "v1/predict",
        "HYCHAT_GCP_HEALTH_ROUTE": "/alive",
        "HYCHAT_RAY_ADDRESS": "ray://head:10001",
        "HYCHAT_RAY_REPLICAS": "3",
        "HYCHAT_RAY_MAX_REPLICAS": "6",
        "HYCHAT_RAY_ROUTING": "balanced",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings(_env_file=None)
    assert (s.host, s.port, s.api_key, s.max_request_bytes, s.log_level) == ("0.0.0.0", 9001, "secret", 4096, "debug")
    assert s.max_tokens_limit == 512
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.model_folders() == [tmp_path.resolve() / "a", tmp_path.resolve() / "b"]
    assert (s.models_presets, s.max_loaded_models, s.models_memory_mib) == (tmp_path / "模型.toml", 2, 4096)
    assert s.keep_alive == 5400
    assert (s.ray_address, s.ray_replicas, s.ray_max_replicas, s.ray_routing) == ("ray://head:10001", 3, 6, "balanced")
    assert s.llamacpp_config() == {
        "enabled": False,
        "model_path": str(tmp_path / "m.gguf"),
        "n_ctx": 4096,
        "n_threads": 3,
        "n_gpu_layers": -1,
        "lora_path": str(tmp_path / "lora.gguf"),
        "lora_scale": 0.5,
        "allow_amx": True,
        "n_batch": 64,
        "parallel": 8,
        "kv_unified": True,
        "queue_size": 0,
        "cache_type_k": "q8_0",
        "cache_type_v": "q4_0",
        "cache_ram_mib": 0,
        "cache_disk_dir": str(tmp_path / "states"),
        "cache_disk_mib": 100,
        "spec_type": "ngram",  # llama-server's ngram-mod is hychat's ngram; given, a draft model does not change it
        "spec_draft_n_max": 8,
        "spec_draft_n_min": 2,
        "spec_ngram_size_n": 4,
        "spec_ngram_min_hits": 2,
        "spec_draft_model": str(tmp_path / "draft.gguf"),
        "spec_draft_p_min": 0.75,
    }
    assert s.speculation() == {
        "type": "ngram", "n_max": 8, "n_min": 2, "ngram_size_n": 4, "ngram_min_hits": 2, "p_min": 0.75
    }  # fmt: skip
    assert s.backend == "pytorch"
    assert s.chat_defaults() == {
        "think": False, "reasoning_format": "none", "truncate": True, "defaults": s.sampling_defaults()
    }  # fmt: skip
    assert (s.responses_store_size, s.responses_store_ttl_s) == (7, 90)
    assert s.torch_config() == {
        "enabled": True,
        "model_path": str(tmp_path / "hf"),
        "lora_path": str(tmp_path / "lora"),
        "merge_lora": False,
        "dtype": "bfloat16",
        "n_ctx": 1024,
        "n_threads": 2,
    }
    assert (s.alias, s.model_tags) == (["gpt-4o", "小助手"], ["chat", "中文"])  # aliases sorted, as llama-server
    assert (s.chat_template, s.jinja) == ("llama3", False)
    assert (s.unknown_model, s.unknown_fields, s.endpoint_slots) == ("default", "ignore", False)
    assert s.endpoint_metrics is False
    assert (s.gcp_compat, s.gcp_predict_route, s.gcp_health_route) == (True, "/v1/predict", "/alive")
    assert s.sampling_defaults() == {
        "max_new_tokens": 64, "temperature": 0.2, "top_k": 20, "top_p": 0.9, "min_p": 0.1,
        "repetition_penalty": 1.1, "seed": 7,
    }  # fmt: skip
    # Every field has a variable in this test, so a new setting cannot go untested (the template
    # file excludes HYCHAT_CHAT_TEMPLATE: test_llama_server_settings has it).
    assert {f"HYCHAT_{name.upper()}" for name in Settings.model_fields} == set(env) | {"HYCHAT_CHAT_TEMPLATE_FILE"}


def test_llama_server_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("HYCHAT_CHAT_TEMPLATE_FILE", str(tmp_path / "t.jinja"))
    monkeypatch.setenv("HYCHAT_HOST", "127.0.0.1, ::1,127.0.0.1")
    s = Settings(_env_file=None)
    assert s.chat_template_file == str(tmp_path / "t.jinja") and s.hosts() == ["127.0.0.1", "::1"]
    assert s.sampling_defaults() == {} and s.alias == [] and s.jinja is True
    # llama-server's spellings: -1 for unset, deepseek for the reasoning apart.
    s = Settings(_env_file=None, default_max_tokens=-1, default_seed="-1", reasoning_format="deepseek")
    assert (s.default_max_tokens, s.default_seed, s.reasoning_format) == (None, None, "auto")
    for bad, problem in [
        ({"chat_template": "chatml"}, "give either chat_template or chat_template_file"),
        ({"default_max_tokens": 5000}, "default_max_tokens (--n-predict) 5000 is above max_tokens_limit 4096"),
        ({"host": " , "}, "give at least one address"),
        ({"default_top_p": 0}, "greater than 0"),
        ({"default_seed": 2**32}, "less than 4294967296"),
        ({"reasoning_format": "deepseek-legacy"}, "Input should be 'auto' or 'none'"),
        ({"spec_type": "draft-mtp"}, "Input should be 'none', 'ngram' or 'draft'"),
        ({"spec_draft_p_min": -0.1}, "greater than or equal to 0"),
        ({"spec_draft_p_min": 1.5}, "less than or equal to 1"),
        ({"spec_draft_p_min": math.nan}, "spec_draft_p_min"),
        ({"spec_draft_n_max": 257}, "less than or equal to 256"),
        ({"spec_draft_n_min": -1}, "greater than or equal to 0"),
        ({"spec_ngram_size_n": 0}, "greater than or equal to 1"),
        ({"spec_ngram_size_n": 65}, "less than or equal to 64"),
        ({"spec_ngram_min_hits": 0}, "greater than or equal to 1"),
    ]:
        with pytest.raises(ValueError) as caught:
            Settings(_env_file=None, **bad)
        assert problem in str(caught.value)


def test_the_speculative_types_are_app_types_and_llama_servers_names_are_hychats():
    assert get_args(SpecType) == get_args(types.SpecType)  # config is a leaf: it keeps its own copy
    assert Settings(_env_file=None).speculation() == asdict(types.Speculation())  # the same defaults
    for name in ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache"):
        assert Settings(_env_file=None, spec_type=name).spec_type == "ngram"
    for name in ("draft", "draft-simple"):
        assert Settings(_env_file=None, spec_type=name).speculation()["type"] == "draft"  # no draft model: allowed
    assert Settings(_env_file=None, spec_type="none").speculation()["type"] == "none"
    assert Settings(_env_file=None, spec_draft_p_min=0.5).speculation()["p_min"] == 0.5


def test_a_draft_model_makes_draft_the_type_unless_one_is_given(monkeypatch, tmp_path):
    """llama-server: -md turns draft speculation on; an explicit --spec-type still wins."""
    for name in ("HYCHAT_SPEC_TYPE", "HYCHAT_SPEC_DRAFT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    draft = str(tmp_path / "draft.gguf")
    s = Settings(_env_file=None, spec_draft_model=draft)
    assert (s.spec_type, s.speculation()["type"], s.llamacpp_config()["spec_draft_model"]) == ("draft", "draft", draft)
    for given, kept in (("none", "none"), ("ngram", "ngram"), ("ngram-mod", "ngram"), ("draft-simple", "draft")):
        assert Settings(_env_file=None, spec_draft_model=draft, spec_type=given).spec_type == kept
    monkeypatch.setenv("HYCHAT_SPEC_DRAFT_MODEL", draft)  # from the environment too
    assert Settings(_env_file=None).spec_type == "draft"
    monkeypatch.setenv("HYCHAT_SPEC_TYPE", "none")
    assert Settings(_env_file=None).spec_type == "none"
    monkeypatch.setenv("HYCHAT_SPEC_DRAFT_MODEL", "")  # empty: none
    monkeypatch.delenv("HYCHAT_SPEC_TYPE")
    assert (Settings(_env_file=None).spec_draft_model, Settings(_env_file=None).spec_type) == (None, "ngram")


def test_vertex_ai_variables_turn_gcp_compat_on_over_flags_as_in_llama_server(monkeypatch):
    monkeypatch.setenv("AIP_HTTP_PORT", "8089")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "v1/models/m:predict")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "")
    s = Settings(_env_file=None, port=9000)
    assert (s.gcp_compat, s.port, s.gcp_predict_route) == (False, 9000, "/predict")  # not on Vertex AI: ignored
    monkeypatch.setenv("AIP_MODE", "PREDICTION")
    s = Settings(_env_file=None, port=9000)  # the platform's port wins over --port, as llama-server's does
    assert (s.gcp_compat, s.port, s.gcp_predict_route, s.gcp_health_route) == (True, 8089, "/v1/models/m:predict", None)


def test_a_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HYCHAT_PORT", "eighty")
    with pytest.raises(ValueError, match="port"):
        Settings(_env_file=None)


def test_physical_cores_counts_cores_not_hyperthreads():
    n = physical_cores()
    assert 1 <= n <= len(__import__("os").sched_getaffinity(0))


def test_model_config_defaults_to_the_embedded_model():
    from config.settings import MODEL_CONFIG

    assert MODEL_CONFIG["model_path"] == embedded_model_path()
    assert (MODEL_CONFIG["dtype"], MODEL_CONFIG["lora_path"], MODEL_CONFIG["merge_lora"]) == ("auto", None, True)


def test_cli_model_flags_go_to_the_backend_that_answers():
    from app.cli.main import build_settings

    torch = build_settings(backend="pytorch", model="/ckpt", n_ctx=512, threads=3, torch_dtype="float32")
    assert (torch.torch_model_path, torch.torch_n_ctx, torch.torch_n_threads, torch.torch_dtype) == (
        "/ckpt",
        512,
        3,
        "float32",
    )
    assert torch.llamacpp_model_path is None
    llama = build_settings(model="/m.gguf", n_ctx=None, threads=3)
    assert (llama.llamacpp_model_path, llama.llamacpp_n_threads, llama.torch_model_path) == ("/m.gguf", 3, None)


def test_bad_dtype_or_backend_setting_is_refused(monkeypatch):
    monkeypatch.setenv("HYCHAT_TORCH_DTYPE", "int4")
    with pytest.raises(ValueError, match="torch_dtype"):
        Settings(_env_file=None)
    monkeypatch.delenv("HYCHAT_TORCH_DTYPE")
    monkeypatch.setenv("HYCHAT_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="backend"):
        Settings(_env_file=None)


def test_the_old_names_of_the_pytorch_settings_still_work_and_say_so(monkeypatch, tmp_path, caplog):
    from config import settings as settings_module

    monkeypatch.setattr(settings_module, "_WARNED", set())
    (tmp_path / ".env").write_text("HYCHAT_MODEL_N_CTX=1024\n")
    monkeypatch.setenv("HYCHAT_MODEL_DTYPE", "float32")
    monkeypatch.setenv("HYCHAT_MODEL_PATH", "/old/ckpt")
    monkeypatch.setenv("HYCHAT_TORCH_MODEL_PATH", "/new/ckpt")  # the new name wins
    with caplog.at_level("WARNING", logger="config.settings"):
        s = Settings(_env_file=tmp_path / ".env")
    assert (s.torch_dtype, s.torch_n_ctx, s.torch_model_path) == ("float32", 1024, "/new/ckpt")
    assert "HYCHAT_MODEL_DTYPE is deprecated: use HYCHAT_TORCH_DTYPE" in caplog.text
    assert "HYCHAT_MODEL_N_CTX is deprecated: use HYCHAT_TORCH_N_CTX" in caplog.text


@pytest.mark.parametrize(
    "given, seconds",
    [("5m", 300), ("1h30m", 5400), ("90", 90), (12, 12), ("0", 0), ("-1", math.inf), ("-5m", math.inf), ("1.5s", 1.5)],
)
def test_keep_alive_takes_ollamas_durations(given, seconds):
    assert duration_s(given) == seconds


@pytest.mark.parametrize("given", ["5 minutes", "m", "", True, "nan"])
def test_a_keep_alive_that_is_no_duration_is_refused(given):
    with pytest.raises(ValueError, match="duration"):
        duration_s(given)
