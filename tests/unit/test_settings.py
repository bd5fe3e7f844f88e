import pytest

from app.services.cpu import physical_cores
from config.settings import EMBEDDED_MODEL_FILE, Settings, embedded_model_path


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
    }
    assert config["model_path"].endswith(EMBEDDED_MODEL_FILE)


def test_every_setting_is_overridden_by_its_environment_variable(monkeypatch, tmp_path):
    env = {
        "HYCHAT_HOST": "0.0.0.0",
        "HYCHAT_PORT": "9001",
        "HYCHAT_API_KEY": "secret",
        "HYCHAT_MAX_REQUEST_BYTES": "4096",
        "HYCHAT_LOG_LEVEL": "debug",
        "HYCHAT_LLAMACPP_ENABLED": "false",
        "HYCHAT_LLAMACPP_MODEL_PATH": str(tmp_path / "m.gguf"),
        "HYCHAT_LLAMACPP_N_CTX": "4096",
        "HYCHAT_LLAMACPP_N_THREADS": "3",
        "HYCHAT_LLAMACPP_N_GPU_LAYERS": "-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings(_env_file=None)
    assert (s.host, s.port, s.api_key, s.max_request_bytes, s.log_level) == ("0.0.0.0", 9001, "secret", 4096, "debug")
    assert s.llamacpp_config() == {
        "enabled": False,
        "model_path": str(tmp_path / "m.gguf"),
        "n_ctx": 4096,
        "n_threads": 3,
        "n_gpu_layers": -1,
    }
    # Every field has a variable in this test, so a new setting cannot go untested.
    assert {f"HYCHAT_{name.upper()}" for name in Settings.model_fields} == set(env)


def test_a_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HYCHAT_PORT", "eighty")
    with pytest.raises(ValueError, match="port"):
        Settings(_env_file=None)


def test_physical_cores_counts_cores_not_hyperthreads():
    n = physical_cores()
    assert 1 <= n <= len(__import__("os").sched_getaffinity(0))
