"""The model library: every model in the configured model folders, and a presets file of per-model
settings. The service registry lists it (models loaded or not) and loads its models on demand.

What is a model:
- only the top level of each folder is scanned (a folder that does not exist is skipped), hidden
  names aside. `NAME.gguf` is a GGUF model, or a GGUF adapter when its `general.type` is "adapter"
  (llama.cpp's convert_lora_to_gguf.py, which `hychat lora-to-gguf` runs); of a split model
  (`NAME-00001-of-00003.gguf`) only the first part is listed, its size the sum of all parts.
- a sub-folder holding `adapter_config.json` is a peft adapter; one holding `config.json` and weights
  (`*.safetensors`, `pytorch_model*.bin`) is a checkpoint.
- a file that cannot load is listed with `problem` saying why: one bad file never fails the listing.

Names: a GGUF's is its file name with the suffix (what the server reports for it), a folder's its
folder name. The presets file (TOML) holds one table per model; paths are relative to its folder:

    ["SmolLM2-135M-Instruct.Q4_1.gguf"]     # sets this model's settings (a name with dots needs quotes)
    aliases = ["smol"]
    n_ctx = 4096
    temperature = 0.2                        # for requests naming it that set none; also top_p,
    max_tokens = 512                         # top_k, min_p, repetition_penalty, seed
    think = false                            # its thinking default

    [smol-long]                              # a section with a path defines a model of its own name
    path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    n_ctx = 0
    cache_type_k = "q8_0"                    # the KV cache's element types, llama-server's names: f32,
    cache_type_v = "q8_0"                    # f16 (the default), bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1

A file a section's path names is listed by the section's name only, unless a section names it too.
A name or alias is one model's: a later model taking it is listed with a problem.

The load settings (n_ctx, parallel, n_threads, n_gpu_layers, n_batch, kv_unified, chat_template or
chat_template_file; cache_type_k/v, llama.cpp's only: a quantized V cache needs flash attention, which
the llama.cpp backend turns on) apply when the model loads, keep_alive once it is idle. The request
defaults (max_tokens, the sampling keys, think) take the place of the server's HYCHAT_DEFAULT_* and
HYCHAT_THINK for the requests naming the model (an adapter's own over its base's).

An adapter's base model: the preset's `base` (a name or alias); else a library model its own files
name: a peft adapter's `base_model_name_or_path` (its last part: a checkpoint folder's name). A GGUF
adapter made by llama.cpp's converter carries no file name of its base, only the model card's
`general.base_model.N.name` (a title, "SmolLM2 135M Instruct") and `.repo_url`: they count when a
library GGUF is named or aliased exactly so. `hychat lora-to-gguf` writes no manifest, and `hychat
build`'s manifest.json records merged models, never an adapter. Otherwise the adapter has a problem.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from app.errors import InvalidParameterError, ModelFileError
from app.modelfiles.gguf import GGUFHeader, file_type_name, read_gguf
from app.modelfiles.presets import KV_CACHE_TYPES, Preset, cache_types, parse_presets

Kind = Literal["gguf", "gguf_adapter", "checkpoint", "peft_adapter"]

MIB = 1 << 20
COMPUTE_BYTES = 128 * MIB  # with 10% of the weights: estimate_bytes' allowance for compute buffers
F16_BYTES = 2
CONFIG, ADAPTER_CONFIG = "config.json", "adapter_config.json"
CHECKPOINT_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
SPLIT = re.compile(r"(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf")
NO_BASE = "its base model is not known: name it in the presets file ([{name}] base = ...)"
# The base each adapter kind runs on: llama.cpp applies GGUF adapters, peft applies its own.
BASE_KIND: dict[str, str] = {"gguf_adapter": "gguf", "peft_adapter": "checkpoint"}
BLOCKS = {number: (block, size) for number, block, size in KV_CACHE_TYPES.values()}  # ggml type: its layout
LOAD_KEYS = ("n_ctx", "parallel", "n_threads", "n_gpu_layers", "n_batch", "kv_unified", "chat_template")


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    path: Path  # resolved
    kind: Kind
    size_bytes: int  # a folder: the sum of its weight files; a split GGUF: of its parts
    modified_ns: int
    aliases: tuple[str, ...] = ()
    base: str | None = None  # an adapter's base model: its library name
    preset: Preset | None = field(default=None, hash=False)
    problem: str | None = None  # why it cannot load; None when fine
    architecture: str | None = None
    quantization: str | None = None  # a GGUF's general.file_type as llama.cpp names it ("Q4_K_M")
    n_ctx_train: int | None = None
    kv_bytes_per_token: int | None = None  # f16 K and V of one token over all layers
    k_bytes_per_token: int | None = None  # the K part of it (None: half)

    @property
    def backend(self) -> str:
        return "llamacpp" if self.kind in ("gguf", "gguf_adapter") else "pytorch"

    @property
    def is_adapter(self) -> bool:
        return self.kind in BASE_KIND


_Read = tuple[LibraryEntry, tuple[str, ...]]  # an entry, and the names its files give its base model


class Library:
    """Rescans the folders at each `entries()` (a directory listing and a stat per file) but reads a
    model's header again only when its files' sizes or modification times changed. Threads may share
    it: each cache update is one assignment, and the worst a race costs is one header read twice."""

    def __init__(self, folders: Sequence[Path], presets_path: Path | None = None):
        self.folders = list(dict.fromkeys(Path(f).expanduser().resolve() for f in folders))
        self.presets_path = Path(presets_path).expanduser() if presets_path is not None else None
        self._read: dict[Path, tuple[tuple, _Read]] = {}  # path: (its files' sizes and times, what they said)
        self._presets: tuple[tuple, dict[str, Preset]] = ((), {})

    def entries(self) -> list[LibraryEntry]:
        return sorted(self._listing()[0], key=lambda e: e.name)

    def find(self, name: str) -> LibraryEntry | None:
        """The entry `name` names or aliases (of two, the one that kept the name)."""
        return self._listing()[1].get(name)

    def gguf_adapters(self) -> list[LibraryEntry]:
        """The GGUF adapters that can load (llama.cpp applies them on their base, per request)."""
        return [e for e in self.entries() if e.kind == "gguf_adapter" and e.problem is None]

    def at(self, path: Path) -> LibraryEntry | None:
        """The entry of the file or folder `path` (one without preset first: the file as it is)."""
        path = Path(path).resolve()
        return min((e for e in self.entries() if e.path == path), key=lambda e: e.preset is not None, default=None)

    def _listing(self) -> tuple[list[LibraryEntry], dict[str, LibraryEntry]]:
        """Every entry, and the entry each name and alias belongs to."""
        presets = self.presets()
        defined = {name: Path(p.path) for name, p in presets.items() if p.path is not None}
        taken = {path.resolve() for path in defined.values()}
        scanned = [(path.name, path) for path in self._scan()]
        own = {name for name, _ in scanned}
        # The order decides who keeps a name taken twice: the folders' models first, in folder order. A
        # file a section's path names is listed by that name only, unless a section of its own names it.
        kept = [(n, p) for n, p in scanned if n not in defined and (n in presets or p.resolve() not in taken)]
        wanted = [(n, p, presets.get(n)) for n, p in kept]
        wanted += [(n, p, presets[n]) for n, p in defined.items()]
        listed = [self._entry(n, p, preset) for n, p, preset in wanted]
        listed += [(self._missing(n, p), ()) for n, p in presets.items() if p.path is None and n not in own]
        entries, owner = _claim_names([entry for entry, _ in listed])
        entries = [_with_base(e, names, entries, owner) for e, (_, names) in zip(entries, listed, strict=True)]
        return entries, {name: entries[i] for name, i in owner.items()}

    def presets(self) -> dict[str, Preset]:
        path = self.presets_path
        if path is None:
            return {}
        try:
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if signature == self._presets[0]:
                return self._presets[1]
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
            raise InvalidParameterError(f"{path}: cannot read the presets file ({reason})") from None
        presets = parse_presets(path, text)
        self._presets = (signature, presets)
        return presets

    def _scan(self) -> Iterable[Path]:
        for folder in self.folders:
            try:
                children = sorted(folder.iterdir())
            except OSError:  # a folder that does not exist (yet), or that we may not list
                continue
            yield from (child for child in children if not child.name.startswith(".") and _is_model(child))

    def _entry(self, name: str, path: Path, preset: Preset | None) -> _Read:
        """The entry, and the names its files give its base model (an adapter's)."""
        read, base_names = self._files_say(path)
        aliases = tuple(dict.fromkeys(a for a in preset.aliases if a != name)) if preset else ()
        problem = read.problem or _template_problem(preset)
        entry = replace(read, name=name, path=path.resolve(), aliases=aliases, preset=preset, problem=problem)
        return entry, base_names

    def _files_say(self, path: Path) -> _Read:
        """Read with the name it is listed by, not its link's target: a split GGUF's name finds its parts."""
        weights, described = _files(path)
        stats = [(f, _stat(f)) for f in (*weights, *described)]
        signature = tuple((f.name, s.st_size, s.st_mtime_ns) for f, s in stats if s)
        cached = self._read.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        size = sum(s.st_size for f, s in stats if s and f in weights)
        modified_ns = max((s.st_mtime_ns for _, s in stats if s), default=0)
        read = _read(LibraryEntry("", path, "gguf", size, modified_ns), weights)
        self._read[path] = (signature, read)
        return read

    def _missing(self, name: str, preset: Preset) -> LibraryEntry:
        """A section naming no library model and no path."""
        where = ", ".join(map(str, self.folders)) or "none configured"
        problem = f"no model named {name!r} in the model folders ({where}); give its path in the presets file"
        kind: Kind = "gguf" if name.endswith(".gguf") else "checkpoint"
        folder = self.presets_path.parent if self.presets_path else Path.cwd()
        path = (folder / name).resolve()
        return LibraryEntry(name, path, kind, 0, 0, tuple(preset.aliases), preset=preset, problem=problem)


def load_options(entry: LibraryEntry) -> dict[str, Any]:
    """The preset's load keywords that are set, for a backend's `load_model`; a chat_template_file's
    text as `chat_template`; the KV cache types as llama.cpp's `type_k`, `type_v` (a PyTorch model
    has no such setting: an error)."""
    preset = entry.preset
    if preset is None:
        return {}
    options = {key: getattr(preset, key) for key in LOAD_KEYS if getattr(preset, key) is not None}
    if (types := cache_types(preset)) and entry.backend != "llamacpp":
        raise InvalidParameterError(
            f"[{entry.name}] cache_type_k and cache_type_v are llama.cpp's settings; {entry.name} "
            "is a PyTorch model: leave them out of its preset"
        )
    options |= types
    if preset.chat_template_file is not None:
        file = Path(preset.chat_template_file)
        try:
            options["chat_template"] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
            raise InvalidParameterError(f"{file}: cannot read [{entry.name}] chat_template_file ({reason})") from None
    return options


def estimate_bytes(entry: LibraryEntry, n_ctx_total: int, options: Mapping[str, Any] | None = None) -> int:
    """The memory `entry` takes once loaded with `n_ctx_total` KV cells (all sequences together), for
    deciding before loading whether it fits. An estimate that errs high, not a measurement: the weights
    as on disk, a KV cache for every cell (none where the architecture's numbers are unknown) in the
    types of `options` (load keywords: `type_k`, `type_v`; default: the entry's preset's; f16 where
    none is given), and an allowance for llama.cpp's compute buffers, which it sizes from the graph,
    batch and context (SmolLM2 135M: 99 MiB at n_ctx 2048, 166 MiB at 8192). An adapter: its own
    size; its base counts apart."""
    if entry.is_adapter:
        return entry.size_bytes
    types = (cache_types(entry.preset) if entry.preset else {}) if options is None else options
    kv_f16 = entry.kv_bytes_per_token or 0
    k_f16 = kv_f16 // 2 if entry.k_bytes_per_token is None else entry.k_bytes_per_token
    per_token = _in_type(k_f16, types.get("type_k")) + _in_type(kv_f16 - k_f16, types.get("type_v"))
    return entry.size_bytes + per_token * max(n_ctx_total, 0) + entry.size_bytes // 10 + COMPUTE_BYTES


def kv_bytes_per_token(header: GGUFHeader, type_k: int | None = None, type_v: int | None = None) -> int | None:
    """What one token's K and V take over all layers, in the ggml types given (None: f16); None where
    the architecture's numbers are unknown."""
    kv = _gguf_kv_bytes(header)
    return None if kv is None else _in_type(kv[0], type_k) + _in_type(kv[1], type_v)


def _in_type(f16_bytes: int, ggml_type: int | None) -> int:
    """What `f16_bytes` of f16 values take in the ggml type `ggml_type` (None: f16), whole blocks."""
    block, size = BLOCKS.get(ggml_type, (1, F16_BYTES))
    values = f16_bytes // F16_BYTES
    return -(-values * size // block)


# -- what is on disk ---------------------------------------------------------------------------------


def _is_model(path: Path) -> bool:
    try:
        if path.is_dir():
            adapter, config = (path / ADAPTER_CONFIG).is_file(), (path / CONFIG).is_file()
            return adapter or (config and bool(_checkpoint_weights(path)))
    except OSError:  # a folder we may not look into: nothing to list or load
        return False
    split = SPLIT.fullmatch(path.name)
    return path.suffix == ".gguf" and (split is None or int(split["part"]) == 1)


def _files(path: Path) -> tuple[list[Path], list[Path]]:
    """(the files holding the weights, the small files describing them) of a model file or folder."""
    if not path.is_dir():
        return _split_parts(path), []
    if (path / ADAPTER_CONFIG).is_file():
        return [path / name for name in ADAPTER_WEIGHTS if (path / name).is_file()], [path / ADAPTER_CONFIG]
    return _checkpoint_weights(path), [path / CONFIG]


def _checkpoint_weights(folder: Path) -> list[Path]:
    found = {f for pattern in CHECKPOINT_WEIGHTS for f in folder.glob(pattern) if not f.name.startswith(".")}
    return sorted(f for f in found if f.is_file())


def _split_parts(path: Path) -> list[Path]:
    """A split GGUF's parts (the first names them all), or just the file."""
    split = SPLIT.fullmatch(path.name)
    if split is None:
        return [path]
    count = int(split["count"])
    return [path.with_name(f"{split['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:  # a part missing, a broken link: the reader says so
        return None


def _read(blank: LibraryEntry, weights: list[Path]) -> _Read:
    """What a model's files say: `blank` (its path, size and time) filled in, and its base's names."""
    path = blank.path
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        return _read_peft(blank, weights)
    if path.is_dir():
        return _read_checkpoint(blank, weights), ()
    missing = [part.name for part in weights[1:] if not part.is_file()]
    if missing:
        return replace(blank, problem=f"a part of this split model is missing: {missing[0]}"), ()
    try:
        header = read_gguf(path)
        quantization = file_type_name(header.metadata.get("general.file_type"))
    except ModelFileError as error:  # ModelFileError(entry.path, entry.problem) says it again in full
        return replace(blank, problem=error.problem), ()
    except ImportError:  # the tensor sizes come from llama.cpp's ggml: a GGUF cannot be read without it
        return replace(blank, problem="GGUF models need llama-cpp-python, which is not installed"), ()
    n_ctx_train = header.arch_value("context_length")
    gguf = replace(blank, architecture=header.architecture, n_ctx_train=_int(n_ctx_train))
    if header.metadata.get("general.type") != "adapter":
        kv = _gguf_kv_bytes(header)
        per_token = {"kv_bytes_per_token": sum(kv), "k_bytes_per_token": kv[0]} if kv else {}
        return replace(gguf, quantization=quantization, **per_token), ()
    adapter_type = header.metadata.get("adapter.type")
    problem = None if adapter_type == "lora" else f"a GGUF adapter of type {adapter_type!r}, not a LoRA"
    return replace(gguf, kind="gguf_adapter", problem=problem), _gguf_base_names(header.metadata)


def _gguf_kv_bytes(header: GGUFHeader) -> tuple[int, int] | None:
    """f16 K and V of one token: n_layer * n_head_kv * key_length (value_length) * 2 bytes, with
    per-layer head counts summed; key and value lengths default to embedding_length / head_count, as
    in llama.cpp."""
    n_layer, n_embd = header.arch_value("block_count"), header.arch_value("embedding_length")
    heads = _per_layer(header.arch_value("attention.head_count"), n_layer)
    heads_kv = _per_layer(header.arch_value("attention.head_count_kv"), n_layer) or heads
    if heads is None or heads_kv is None:
        return None
    head_dim = n_embd // max(heads) if isinstance(n_embd, int) and max(heads, default=0) else 0
    key_length = header.arch_value("attention.key_length") or head_dim
    value_length = header.arch_value("attention.value_length") or head_dim
    if not isinstance(key_length, int) or not isinstance(value_length, int):
        return None
    return sum(heads_kv) * key_length * F16_BYTES, sum(heads_kv) * value_length * F16_BYTES


def _per_layer(value: Any, n_layer: Any) -> list[int] | None:
    """A head count for each layer: GGUF stores one number, or (some architectures) one per layer."""
    if not isinstance(n_layer, int) or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value] * n_layer
    if isinstance(value, list) and len(value) == n_layer and all(isinstance(v, int) for v in value):
        return value
    return None


def _gguf_base_names(meta: dict[str, Any]) -> tuple[str, ...]:
    """What the adapter's model card said its base is: a title ("SmolLM2 135M Instruct") and a repo URL."""
    count = meta.get("general.base_model.count")
    names = []
    for i in range(count if isinstance(count, int) else 0):
        name, url = meta.get(f"general.base_model.{i}.name"), meta.get(f"general.base_model.{i}.repo_url")
        names += [name] if isinstance(name, str) else []
        if isinstance(url, str) and "huggingface.co/" in url:
            repo = url.split("huggingface.co/", 1)[1].strip("/")
            names += [repo, repo.rsplit("/", 1)[-1]]
    return tuple(dict.fromkeys(names))


def _read_peft(blank: LibraryEntry, weights: list[Path]) -> _Read:
    config, problem = _json(blank.path / ADAPTER_CONFIG)
    if problem is None and not weights:
        problem = f"no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
    base = config.get("base_model_name_or_path")
    names = (base, Path(base).name) if isinstance(base, str) and base else ()
    return replace(blank, kind="peft_adapter", problem=problem), tuple(dict.fromkeys(names))


def _read_checkpoint(blank: LibraryEntry, weights: list[Path]) -> LibraryEntry:
    blank = replace(blank, kind="checkpoint")
    if not (blank.path / CONFIG).is_file():
        return replace(blank, problem=f"not a model folder: no {CONFIG} with weights, no {ADAPTER_CONFIG}")
    config, problem = _json(blank.path / CONFIG)
    if problem is None and not weights:
        problem = f"no weights ({' or '.join(CHECKPOINT_WEIGHTS)})"
    # Multimodal checkpoints keep the language model's numbers in text_config.
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    architecture, n_ctx_train = config.get("model_type"), _int(text.get("max_position_embeddings"))
    kv_bytes = _checkpoint_kv_bytes(text)
    return replace(
        blank, problem=problem, architecture=architecture, n_ctx_train=n_ctx_train, kv_bytes_per_token=kv_bytes
    )


def _checkpoint_kv_bytes(config: dict[str, Any]) -> int | None:
    """K and V of one token over all layers at 2 bytes (bf16/f16), as transformers' cache holds them."""
    n_layer, n_head = config.get("num_hidden_layers"), config.get("num_attention_heads")
    n_head_kv = config.get("num_key_value_heads") or n_head
    hidden = config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // n_head if isinstance(hidden, int) and n_head else None)
    if not all(isinstance(v, int) for v in (n_layer, n_head_kv, head_dim)):
        return None
    return n_layer * n_head_kv * head_dim * 2 * F16_BYTES


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        return {}, f"cannot read {path.name} ({error.strerror})"
    except ValueError as error:  # bad JSON or bad UTF-8
        return {}, f"{path.name} is not valid JSON ({error})"
    return (value, None) if isinstance(value, dict) else ({}, f"{path.name} is not a JSON object")


# -- names and bases -----------------------------------------------------------------------------


def _claim_names(entries: list[LibraryEntry]) -> tuple[list[LibraryEntry], dict[str, int]]:
    """Each name and alias is the first entry's to claim it; a later one gets a problem naming it.
    Returns the entries and, for each name, its owner's index."""
    owner: dict[str, int] = {}
    claimed = []
    for i, entry in enumerate(entries):
        taken = next((n for n in (entry.name, *entry.aliases) if n in owner), None)
        if taken is None:
            owner |= dict.fromkeys((entry.name, *entry.aliases), i)
        else:
            first = entries[owner[taken]]
            entry = replace(entry, problem=f"the name {taken!r} is taken by {first.name} ({first.path})")
        claimed.append(entry)
    return claimed, owner


def _with_base(
    entry: LibraryEntry, base_names: tuple[str, ...], entries: list[LibraryEntry], owner: dict[str, int]
) -> LibraryEntry:
    """An adapter with its base model's name, or a problem saying why it has none."""
    if not entry.is_adapter:
        return entry
    wanted = BASE_KIND[entry.kind]
    named = entry.preset.base if entry.preset and entry.preset.base else None
    if named is None:  # the names its own files give, when one is a library model of the right kind
        found = (entries[owner[n]] for n in base_names if n in owner)
        base = next((b for b in found if b.kind == wanted), None)
        problem = None if base else NO_BASE.format(name=entry.name)
    elif named not in owner:
        base, problem = None, f"its base model {named!r} is not in the library"
    else:
        base = entries[owner[named]]
        problem = None if base.kind == wanted else f"its base model {named!r} is a {base.kind}; it needs a {wanted}"
    return replace(entry, base=base.name if base else None, problem=entry.problem or problem or _runs_on_base(entry))


def _runs_on_base(entry: LibraryEntry) -> str | None:
    """A GGUF adapter runs on its base as the base is loaded: load settings in its own section would
    change nothing, so they are a mistake to report."""
    keys = (*LOAD_KEYS, "chat_template_file", "cache_type_k", "cache_type_v", "keep_alive")
    given = [key for key in keys if entry.kind == "gguf_adapter" and getattr(entry.preset, key, None) is not None]
    if not given:
        return None
    return f"{', '.join(given)}: an adapter runs on its base model as that is loaded; set them in the base's section"


def _template_problem(preset: Preset | None) -> str | None:
    if preset is None or preset.chat_template_file is None or Path(preset.chat_template_file).is_file():
        return None
    return f"its chat_template_file {preset.chat_template_file} does not exist"
