"""The model library on real files: the embedded SmolLM2 GGUF (linked, or copied where a test changes
it), damaged copies, tiny checkpoint and adapter folders, and GGUF adapters written with gguf-py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.errors import InvalidParameterError
from app.modelfiles.gguf import _type_table, read_gguf
from app.modelfiles.library import MIB, Library, estimate_bytes, load_options
from app.modelfiles.presets import KV_CACHE_TYPES, CacheType, Preset, request_defaults

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98362432  # the embedded GGUF
# SmolLM2-135M's numbers, as its config.json gives them.
SMOL_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "max_position_embeddings": 8192,
}


@pytest.fixture
def folder(tmp_path: Path, model_path: str) -> Path:
    """A model folder holding the embedded model (a link: no 98 MB copy)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / SMOL).symlink_to(model_path)
    return models


def checkpoint(parent: Path, name: str, config: dict | None = None, weights: str = "model.safetensors") -> Path:
    """A checkpoint folder as the library lists it: config.json and a weights file (empty: never loaded)."""
    path = parent / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config or SMOL_CONFIG))
    (path / weights).write_bytes(b"")
    return path


def peft_adapter(parent: Path, name: str, base: str) -> Path:
    path = parent / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    return path


def gguf_adapter(path: Path, base_repo_url: str | None = None) -> Path:
    """A GGUF LoRA adapter with the keys llama.cpp's convert_lora_to_gguf.py writes (one tiny pair)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
    if base_repo_url:  # what the converter takes from the adapter's model card (`base_model:`)
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, "SmolLM2 135M Instruct")
        writer.add_base_model_repo_url(0, base_repo_url)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((8, 576), np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((576, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def presets(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(text)
    return path


def by_name(library: Library) -> dict:
    return {entry.name: entry for entry in library.entries()}


def test_lists_models_with_what_their_files_say(folder, tmp_path, model_path):
    (folder / "damaged.gguf").write_bytes(Path(model_path).read_bytes()[: SIZE // 2])
    checkpoint(folder, "smol-checkpoint", weights="model-00001-of-00002.safetensors")
    (folder / "smol-checkpoint" / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 10)
    (folder / "split-00001-of-00002.gguf").symlink_to(model_path)
    (folder / "split-00002-of-00002.gguf").symlink_to(model_path)
    (folder / ".hidden.gguf").symlink_to(model_path)
    (folder / "notes.txt").write_text("not a model")
    (folder / "tokenizer-only").mkdir()
    (folder / "tokenizer-only" / "config.json").write_text("{}")  # no weights: not a model
    library = Library([folder, tmp_path / "does-not-exist"])

    entries = by_name(library)

    assert list(entries) == sorted(["damaged.gguf", SMOL, "smol-checkpoint", "split-00001-of-00002.gguf"])
    smol = entries[SMOL]
    assert (smol.kind, smol.backend, smol.size_bytes, smol.problem) == ("gguf", "llamacpp", SIZE, None)
    assert smol.path == Path(model_path).resolve()
    assert (smol.architecture, smol.quantization, smol.n_ctx_train) == ("llama", "Q4_1", 8192)
    # f16 K and V over all layers, from the GGUF's own numbers (head size: embedding / heads).
    header = read_gguf(model_path)
    n_layer, n_head = header.metadata["llama.block_count"], header.metadata["llama.attention.head_count"]
    n_head_kv, n_embd = header.metadata["llama.attention.head_count_kv"], header.metadata["llama.embedding_length"]
    assert smol.kv_bytes_per_token == n_layer * n_head_kv * (2 * n_embd // n_head) * 2 == 30 * 3 * 128 * 2
    damaged = entries["damaged.gguf"]
    assert damaged.kind == "gguf" and damaged.size_bytes == SIZE // 2
    assert damaged.problem.startswith("truncated: expected at least") and "damaged.gguf" not in damaged.problem
    ckpt = entries["smol-checkpoint"]
    assert (ckpt.kind, ckpt.backend, ckpt.size_bytes, ckpt.problem) == ("checkpoint", "pytorch", 10, None)
    assert (ckpt.architecture, ckpt.n_ctx_train, ckpt.kv_bytes_per_token) == ("llama", 8192, smol.kv_bytes_per_token)
    split = entries["split-00001-of-00002.gguf"]
    assert (split.size_bytes, split.problem) == (2 * SIZE, None)
    assert not any(entry.is_adapter for entry in entries.values())


def test_a_missing_split_part_or_preset_path_is_a_problem(folder, tmp_path, model_path):
    (folder / "split-00001-of-00003.gguf").symlink_to(model_path)
    (folder / "split-00002-of-00003.gguf").symlink_to(model_path)
    library = Library([folder], presets(tmp_path, '[gone]\npath = "models/nothing.gguf"\n[elsewhere]\n'))

    entries = by_name(library)

    assert (
        entries["split-00001-of-00003.gguf"].problem
        == "a part of this split model is missing: split-00003-of-00003.gguf"
    )
    assert entries["gone"].problem == "file not found"
    assert entries["gone"].path == folder / "nothing.gguf"
    assert entries["elsewhere"].problem.startswith("no model named 'elsewhere' in the model folders")
    assert entries[SMOL].problem is None


def test_presets_name_aliases_options_and_a_template_file(folder, tmp_path, model_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.jinja").write_text("{{ messages[0].content }} ✓", encoding="utf-8")
    path = presets(
        tmp_path,
        f"""
        ["{SMOL}"]
        aliases = ["smol", "tiny"]
        n_ctx = 4096
        parallel = 2
        kv_unified = true
        chat_template_file = "templates/chat.jinja"
        keep_alive = "1h30m"

        [smol-long]
        path = "{model_path}"
        n_ctx = 0
        chat_template = "chatml"
        keep_alive = -1
        """,
    )
    library = Library([folder], path)

    smol, long = library.find("smol"), library.find("smol-long")

    assert smol == library.find("tiny") == library.find(SMOL)
    assert (smol.name, smol.aliases, smol.preset.keep_alive) == (SMOL, ("smol", "tiny"), "1h30m")
    assert load_options(smol) == {
        "n_ctx": 4096,
        "parallel": 2,
        "kv_unified": True,
        "chat_template": "{{ messages[0].content }} ✓",
    }
    assert long.path == smol.path and long.preset.keep_alive == -1.0
    assert load_options(long) == {"n_ctx": 0, "chat_template": "chatml"}
    assert load_options(by_name(Library([folder]))[SMOL]) == {}
    assert library.find("nothing") is None
    assert library.at(Path(model_path)) == smol  # the file as it is, not the preset naming it


def test_a_section_with_a_path_lists_the_file_under_its_name_only(folder, tmp_path):
    library = Library([folder], presets(tmp_path, f'[smol]\npath = "models/{SMOL}"\naliases = ["s"]\n'))

    assert [entry.name for entry in library.entries()] == ["smol"]
    assert library.find("s").kind == "gguf"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('["a.gguf"]\nn_ctxx = 4096\n', "[a.gguf] unknown key 'n_ctxx'"),
        ("[a.gguf\nn_ctx = 1\n", "not valid TOML"),
        ('["a.gguf"]\nn_ctx = "4096"\n', "[a.gguf] n_ctx: Input should be a valid integer"),
        ('["a.gguf"]\nparallel = 65\n', "[a.gguf] parallel: Input should be less than or equal to 64"),
        ('["a.gguf"]\nkeep_alive = "5 minutes"\n', "'5 minutes' is neither seconds nor a duration"),
        ('["a.gguf"]\nchat_template = "chatml"\nchat_template_file = "t.jinja"\n', "either chat_template or"),
        ("n_ctx = 4096\n", "n_ctx = 4096 is outside any [model] table"),
        ("[a.gguf]\nn_ctx = 1\n", "unknown key 'gguf' (a model name with dots needs quotes: [\"name.gguf\"])"),
        ('["a.gguf"]\ntemperature = "hot"\n', "[a.gguf] temperature: Input should be a valid number"),
        ('["a.gguf"]\ntop_p = 0.0\n', "[a.gguf] top_p: Input should be greater than 0"),
        ('["a.gguf"]\nmin_p = 1.5\n', "[a.gguf] min_p: Input should be less than or equal to 1"),
        ('["a.gguf"]\nseed = 4294967296\n', "[a.gguf] seed: Input should be less than 4294967296"),
        ('["a.gguf"]\nmax_tokens = 0\n', "[a.gguf] max_tokens: Input should be greater than or equal to 1"),
        ('["a.gguf"]\nthink = "no"\n', "[a.gguf] think: Input should be a valid boolean"),
        ('["a.gguf"]\ncache_type_k = "q3"\n', "[a.gguf] cache_type_k: Input should be 'f32', 'f16', 'bf16', 'q8_0'"),
    ],
)
def test_a_bad_presets_file_is_an_error_naming_it_and_the_problem(folder, tmp_path, text, said):
    path = presets(tmp_path, text)
    library = Library([folder], path)

    for call in (library.presets, library.entries):
        with pytest.raises(InvalidParameterError) as caught:
            call()
        assert str(caught.value).startswith(f"{path}: ") and said in str(caught.value)


def test_adapters_get_their_base_from_the_presets_or_their_own_files(folder, tmp_path):
    gguf_adapter(folder / "named.gguf")
    gguf_adapter(folder / "orphan.gguf")
    gguf_adapter(folder / "loaded-so.gguf")
    gguf_adapter(folder / "carded.gguf", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct")
    gguf_adapter(folder / "misplaced.gguf")
    checkpoint(folder, "SmolLM2-135M-Instruct")
    peft_adapter(folder, "peft-lora", base="HuggingFaceTB/SmolLM2-135M-Instruct")
    peft_adapter(folder, "peft-stray", base="/somewhere/else/Qwen3-0.6B")
    path = presets(
        tmp_path,
        f"""
        ["{SMOL}"]
        aliases = ["HuggingFaceTB/SmolLM2-135M-Instruct"]
        ["named.gguf"]
        base = "{SMOL}"
        lora_scale = 0.5
        ["misplaced.gguf"]
        base = "SmolLM2-135M-Instruct"
        ["loaded-so.gguf"]
        base = "{SMOL}"
        n_ctx = 4096
        keep_alive = "1h"
        """,
    )

    entries = by_name(Library([folder], path))

    named = entries["named.gguf"]
    assert (named.kind, named.backend, named.is_adapter, named.base, named.problem) == (
        "gguf_adapter",
        "llamacpp",
        True,
        SMOL,
        None,
    )
    assert named.preset.lora_scale == 0.5 and named.architecture == "llama"
    assert estimate_bytes(named, 100_000) == named.size_bytes == (folder / "named.gguf").stat().st_size
    assert entries["orphan.gguf"].base is None
    assert entries["orphan.gguf"].problem == (
        "its base model is not known: name it in the presets file ([orphan.gguf] base = ...)"
    )
    # The model card's repo is the GGUF's alias; the checkpoint of the same name is no base for llama.cpp.
    assert (entries["carded.gguf"].base, entries["carded.gguf"].problem) == (SMOL, None)
    assert (
        entries["misplaced.gguf"].problem == "its base model 'SmolLM2-135M-Instruct' is a checkpoint; it needs a gguf"
    )
    # A GGUF adapter runs on its base as loaded: load settings of its own would change nothing.
    assert entries["loaded-so.gguf"].problem == (
        "n_ctx, keep_alive: an adapter runs on its base model as that is loaded; set them in the base's section"
    )
    lora = entries["peft-lora"]
    assert (lora.kind, lora.backend, lora.base, lora.problem) == (
        "peft_adapter",
        "pytorch",
        "SmolLM2-135M-Instruct",
        None,
    )
    assert entries["peft-stray"].problem.startswith("its base model is not known")


def test_a_name_or_alias_taken_twice_is_a_problem_of_the_later_model(folder, tmp_path, model_path):
    other = tmp_path / "more"
    other.mkdir()
    (other / SMOL).symlink_to(model_path)  # the same file name in a second folder
    checkpoint(folder, "ckpt")
    path = presets(tmp_path, f'["{SMOL}"]\naliases = ["smol"]\n[ckpt]\naliases = ["smol", "ck"]\n')
    library = Library([folder, other], path)

    entries = library.entries()

    resolved = Path(model_path).resolve()
    assert [(e.name, e.problem) for e in entries] == [
        (SMOL, None),
        (SMOL, f"the name '{SMOL}' is taken by {SMOL} ({resolved})"),
        ("ckpt", f"the name 'smol' is taken by {SMOL} ({resolved})"),
    ]
    assert library.find("smol").kind == "gguf" and library.find("ck") is None
    assert library.find(SMOL) == entries[0]


def test_a_header_is_read_again_only_when_the_file_changed(tmp_path, model_path):
    folder = tmp_path / "models"
    folder.mkdir()
    data = Path(model_path).read_bytes()
    copy = folder / "model.gguf"
    copy.write_bytes(data)
    library = Library([folder])
    assert library.entries()[0].problem is None
    stat = copy.stat()

    # The same size and time: taken for the same file, the header is not read again.
    copy.write_bytes(b"XXXX" + data[4:])
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert library.entries()[0].problem is None
    # Replaced (a new modification time): read again.
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert library.entries()[0].problem == "not a GGUF file (bad magic b'XXXX', expected b'GGUF')"
    assert Library([folder]).entries()[0].problem == library.entries()[0].problem


def test_the_presets_file_is_read_again_when_it_changes(folder, tmp_path):
    path = presets(tmp_path, f'["{SMOL}"]\naliases = ["one"]\n')
    library = Library([folder], path)
    assert library.find("one") is not None

    path.write_text(f'["{SMOL}"]\naliases = ["two", "three"]\n')

    assert library.find("one") is None and library.find("three").name == SMOL


def test_the_estimate_grows_with_the_context(folder):
    smol = by_name(Library([folder]))[SMOL]

    small, large = estimate_bytes(smol, 2048), estimate_bytes(smol, 8192)

    assert large - small == 6144 * smol.kv_bytes_per_token
    # Above what llama.cpp reports for it at n_ctx 2048: 92 MiB of weights, 45 MiB KV, 99 MiB compute.
    assert small > (92 + 45 + 99) * MIB


def test_a_missing_template_file_is_a_problem_and_an_error_at_load(folder, tmp_path):
    library = Library([folder], presets(tmp_path, f'["{SMOL}"]\nchat_template_file = "gone.jinja"\n'))

    smol = library.find(SMOL)

    assert smol.problem == f"its chat_template_file {tmp_path / 'gone.jinja'} does not exist"
    with pytest.raises(InvalidParameterError, match=r"gone\.jinja: cannot read \[.*\] chat_template_file"):
        load_options(smol)


def test_presets_give_request_defaults_and_kv_cache_types(folder, tmp_path):
    path = presets(
        tmp_path,
        f"""
        ["{SMOL}"]
        temperature = 0
        top_p = 0.9
        top_k = 20
        min_p = 0.05
        repetition_penalty = 1.1
        seed = 7
        max_tokens = 64
        think = false
        cache_type_k = "q8_0"
        cache_type_v = "q4_0"
        """,
    )

    smol = Library([folder], path).find(SMOL)

    assert (smol.preset.think, smol.preset.cache_type_k, smol.preset.cache_type_v) == (False, "q8_0", "q4_0")
    assert request_defaults(smol.preset) == {
        "max_new_tokens": 64,
        "temperature": 0.0,
        "top_k": 20,
        "top_p": 0.9,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": 7,
    }
    # llama-cpp-python's Llama(type_k=..., type_v=...) take ggml.h's numbers: GGML_TYPE_Q8_0, _Q4_0.
    assert load_options(smol) == {"type_k": 8, "type_v": 2}
    assert request_defaults(Preset(n_ctx=4096, think=True)) == {}


def test_the_kv_cache_types_are_ggmls_own():
    """The table the presets use, against the ggml library llama.cpp loads: the type numbers and blocks."""
    assert set(KV_CACHE_TYPES) == set(CacheType.__args__)
    ggml = _type_table()
    for name, (number, block, size) in KV_CACHE_TYPES.items():
        assert ggml[number] == (block, size, name.upper()), name


def test_a_quantized_kv_cache_shrinks_the_estimate(folder, tmp_path):
    path = presets(tmp_path, f'["{SMOL}"]\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n')
    f16, q8 = by_name(Library([folder]))[SMOL], Library([folder], path).find(SMOL)

    # SmolLM2: 30 layers x 3 KV heads x 64 values for K and for V; f16 2 bytes each, q8_0 34 bytes per 32.
    assert q8.kv_bytes_per_token == f16.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2
    assert q8.k_bytes_per_token == 30 * 3 * 64 * 2
    assert estimate_bytes(f16, 8192) - estimate_bytes(q8, 8192) == 8192 * 2 * 30 * 3 * 64 * (2 - 34 / 32)
    # The load keywords decide when given (an adapter's over its base's preset): here f16 K, q4_0 V.
    mixed = estimate_bytes(q8, 8192, {"type_v": 2})
    assert estimate_bytes(f16, 8192) - mixed == 8192 * 30 * 3 * 64 * (2 - 18 / 32)


def test_kv_cache_types_on_a_pytorch_model_are_an_error_at_load(folder, tmp_path):
    checkpoint(folder, "ckpt")
    library = Library([folder], presets(tmp_path, '[ckpt]\ncache_type_v = "q8_0"\ntemperature = 0.5\n'))

    ckpt = library.find("ckpt")

    assert ckpt.problem is None and request_defaults(ckpt.preset) == {"temperature": 0.5}
    with pytest.raises(InvalidParameterError, match=r"^\[ckpt\] cache_type_k and cache_type_v are llama\.cpp's"):
        load_options(ckpt)
