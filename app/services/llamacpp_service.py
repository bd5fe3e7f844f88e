"""The llama.cpp backend: GGUF models through llama-cpp-python.

from app.services.llamacpp_service import llamacpp_service, LLAMACPP_AVAILABLE
llamacpp_service.load_model(model_path=path, n_ctx=2048, n_threads=8)
text = llamacpp_service.generate(prompt="你好", max_new_tokens=256, temperature=0.7)

Generations run in `app.engine.batch.BatchEngine`: `parallel` slots of `n_ctx` tokens each, decoded
together. `llama_cpp.Llama` only loads the weights and the vocabulary here.

LoRA adapters (GGUF) load once with their model and apply per request (`SamplingParams.lora`, ids in
load order, llama-server's `--lora` and `lora: [{"id", "scale"}]`): the configured `lora_path` is
adapter 0, applied at `lora_scale` to requests that name none; `lora_adapters` load beside it at
scale 0. `with_adapter` serves the model with one of them as a model name of its own (vLLM's way).
"""

from __future__ import annotations

import ctypes
import hashlib
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from app import llama_build, metrics
from app.chat.format import ChatFormat
from app.chat.infill import FimTokens
from app.chat.template import CHATML_TEMPLATE, compile_template
from app.cpu import physical_cores
from app.engine.source import TokenSource
from app.errors import (
    BackendUnavailableError,
    ChatTemplateError,
    EngineClosedError,
    InvalidParameterError,
    ModelFileError,
)
from app.modelfiles.gguf import GGUFHeader, file_type_name, read_gguf
from app.modelfiles.library import kv_bytes_per_token
from app.modelfiles.presets import cache_type_name
from app.services import chat_templates
from app.services.backend import Backend, Generation
from app.services.checks import check_embedding_inputs, check_prompt_fits, is_int_at_least
from app.types import (
    Embeddings,
    GenerationRequest,
    LoraAdapterInfo,
    SamplingParams,
    SlotState,
    Speculation,
    UsageClock,
)

try:
    import llama_cpp

    from app.engine.batch import AdapterSet, BatchEngine, Ticket, Vocabulary
    from app.engine.draft import DraftModel
    from app.engine.embed import Embedder
    from app.engine.prompt_cache import PromptCache
    from app.engine.sampler import RequestSampler
    from app.engine.state_files import StateFiles

    LLAMACPP_AVAILABLE = True
except (ImportError, OSError):  # OSError: the package is there but its shared library is not loadable
    LLAMACPP_AVAILABLE = False

MAX_PARALLEL = 64  # llama_max_parallel_sequences() of the pinned llama.cpp
N_BATCH = 512  # tokens per decode step: llama-server's physical batch

log = logging.getLogger(__name__)


@dataclass
class _Adapter:
    path: Path
    pointer: Any  # llama_adapter_lora_p, freed with the model's weights
    scale: float  # its scale for requests that name no adapters


@dataclass
class _Loaded:
    llm: Any  # llama_cpp.Llama: weights, vocabulary
    header: GGUFHeader
    n_threads: int
    n_gpu_layers: int
    bos_text: str
    n_ctx: int = 0  # per slot: what one request may use
    n_batch: int = 0  # tokens decoded in one step of the engine
    n_ctx_total: int = 0  # the engine context's cells, all slots together
    kv_unified: bool = False  # the slots share their cells (each request may use them all)
    eog: tuple[int, ...] | None = None  # the end-of-generation tokens, once asked for
    weight_buffers: dict[str, float] = field(default_factory=dict)  # MiB per buffer type (CPU_REPACK...)
    engine: Any = None  # BatchEngine
    chat_format: Any = None  # ChatFormat from the GGUF's template
    pieces: dict[int, bytes] = field(default_factory=dict)
    embedder: Any = None  # Embedder, made by the first embedding request
    alias: str | None = None  # the name it is served by, in place of the file's
    template_override: bool = False  # chat_format is not from the GGUF's own template
    embeddings_only: bool = False  # a BERT-type model: no chat engine
    adapters: list[_Adapter] = field(default_factory=list)  # ids are indices, as llama-server's --lora
    own_lora: tuple[tuple[int, float], ...] | None = None  # a served adapter's (with_adapter); None: the scales
    views: dict[tuple, Any] = field(default_factory=dict)  # with_adapter's backends
    draft: Any = None  # llama_cpp.Llama: the draft model's weights (speculative decoding), if any

    def close(self) -> None:
        """The running generations finish on these weights, then the contexts are freed. Dropped here:
        the engine refers back to this model (its vocabulary reads the pieces), and in that cycle the
        weights would wait for Python's cycle collector to be freed."""
        engine, embedder, self.engine, self.embedder = self.engine, self.embedder, None, None
        if engine is not None:
            engine.close()
        if embedder is not None:
            embedder.close()

    @property
    def name(self) -> str:
        return self.alias or self.header.path.name


class LlamaCppBackend(Backend):
    name = "llamacpp"
    label = "llama.cpp"
    available = LLAMACPP_AVAILABLE
    supports_grammar = True
    supports_logprobs = True
    supports_embeddings = True
    supports_infill_sampler = True
    supports_lora = True
    _model: _Loaded | None

    def __init__(
        self,
        on_state: Callable[[int, int, int], None] = lambda queued, busy, slots: None,
        on_decode: Callable[[int], None] = lambda n_sequences: None,
    ) -> None:
        super().__init__()
        self._on_state = on_state  # (queued, busy, slots) after every engine step, for metrics
        self._on_decode = on_decode  # the sequences of each llama_decode, for metrics
        self._embedder_made = threading.Lock()
        self._adapters_changed = threading.Lock()

    def sibling(self) -> LlamaCppBackend:
        # The scheduler gauges stay the configured model's: several engines would overwrite each other.
        return LlamaCppBackend(on_decode=self._on_decode)

    def with_adapter(self, name: str, path: str | Path, scale: float = 1.0) -> LlamaCppBackend:
        """This model with its adapter at `path` (loaded now if it is not yet), served as `name`: a
        backend sharing this one's engine, whose requests run with that adapter unless they name
        others. Its generations count as this model's, which is never unloaded under them."""
        m = self._require()
        lora = ((self._adapter_index(m, Path(path)), scale),)
        view = m.views.get((name, lora))  # the same one each time: listings compare backends
        if view is None:
            view = m.views[name, lora] = LlamaCppBackend(self._on_state, self._on_decode)
            view._model, view._owner = replace(m, alias=name, own_lora=lora), self
        return view

    def lora_adapters(self) -> list[LoraAdapterInfo]:
        """The loaded model's adapters (llama-server's GET /lora-adapters)."""
        m = self._require()
        return [LoraAdapterInfo(i, str(a.path), a.scale) for i, a in enumerate(m.adapters)]

    def set_lora_scales(self, scales: Sequence[tuple[int, float]]) -> None:
        """The scales of requests that name no adapters (llama-server's POST /lora-adapters): those
        given, the others 0."""
        m = self._require()
        given = dict(_checked_lora(m, scales))
        for i, adapter in enumerate(m.adapters):
            adapter.scale = given.get(i, 0.0)

    # -- loading -------------------------------------------------------------------------------

    def load_model(
        self,
        model_path: str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        *,
        parallel: int = 1,
        max_waiting: int = 64,
        n_batch: int = N_BATCH,
        kv_unified: bool = False,
        allow_amx: bool = False,
        chat_template: str | None = None,
        jinja: bool = True,
        alias: str | None = None,
        lora_path: str | None = None,
        lora_scale: float = 1.0,
        lora_adapters: Sequence[str] = (),
        cache_ram_mib: int = 0,
        cache_disk_dir: str | None = None,
        cache_disk_mib: int = 4096,
        draft_model_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Loads a GGUF file, replacing the model loaded before (which finishes its running
        generations first). `n_ctx` tokens for each of `parallel` requests decoded together (0: the
        model's training context); up to `max_waiting` more wait for a slot, beyond that 429.
        `n_batch`: tokens decoded in one step (llama-server's --batch-size), at least one per slot: a
        longer prompt is read over several steps.
        `kv_unified`: the `n_ctx` × `parallel` cells are one pool that any request may fill (up to the
        model's training context), llama-server's --kv-unified; when the requests running together
        fill it, they all fail.
        `allow_amx`: let weights use llama.cpp's AMX kernels, which crash on multi-token batches in
        the releases so far (app.llama_build); off, they go to the other kernels.
        `chat_template`: a Jinja template or the name of a llama.cpp built-in one (chatml, llama3...)
        in place of the GGUF's; `jinja=False`: chats rendered by llama.cpp's built-in templates
        (app.services.chat_templates). `alias`: the name the model is served by (default: the file's).
        `lora_path`: a GGUF adapter applied at `lora_scale` to requests that name no adapters (id 0);
        `lora_adapters`: more, applied only to requests that name them (see the module's docstring).
        `cache_ram_mib`: RAM for slots' KV states kept after their slot moves on, restored when their
        conversation returns (llama-server's --cache-ram; 0: none). `cache_disk_dir`: a folder (a
        subfolder per model) where the states the RAM lets go, and all of them when the model unloads,
        are kept, up to `cache_disk_mib`, and restored from as from RAM.
        `draft_model_path`: a smaller GGUF with the same vocabulary that drafts tokens for requests of
        speculative type draft (llama-server's -md), in a context of its own beside the model's."""
        if not LLAMACPP_AVAILABLE:
            raise BackendUnavailableError("llama-cpp-python is not installed (pip install llama-cpp-python)")
        _check_load_args(n_ctx, n_threads, n_gpu_layers, parallel, max_waiting, kwargs)
        if not is_int_at_least(n_batch, 1):
            raise InvalidParameterError(f"n_batch must be an integer >= 1, got {n_batch!r}")
        if not is_int_at_least(cache_ram_mib, 0):
            raise InvalidParameterError(f"cache_ram_mib must be an integer >= 0, got {cache_ram_mib!r}")
        if not is_int_at_least(cache_disk_mib, 1):
            raise InvalidParameterError(f"cache_disk_mib must be an integer >= 1, got {cache_disk_mib!r}")
        chat_templates.check_served_as(chat_template, alias)
        header = read_gguf(model_path)
        if lora_path:
            read_gguf(lora_path)  # a damaged adapter gets the same clear error as a model
        if draft_model_path:
            read_gguf(draft_model_path)
        n_threads = n_threads or physical_cores()
        # llama-server's default too. Measured here: ~15% faster decode, and prompt logits that do not
        # depend on how the prompt was split into batches, so a cached prefix gives the same answer.
        kwargs.setdefault("flash_attn", True)
        llama_build.keep_weights_off_amx(allow_amx)
        try:
            # Its own context stays small: generations run in the engine's context.
            with llama_build.weight_buffers() as buffers:
                llm = llama_cpp.Llama(model_path=str(header.path), n_ctx=64, n_gpu_layers=n_gpu_layers,
                                      verbose=False, **kwargs)  # fmt: skip
        except ValueError as error:  # llama-cpp-python's way of saying llama.cpp returned NULL
            raise ModelFileError(header.path, f"llama.cpp could not load it ({error})") from None
        loaded = _Loaded(llm, header, n_threads, n_gpu_layers, _token_text(llm, llm.token_bos()), alias=alias)
        loaded.weight_buffers = buffers
        if lora_path:
            try:
                self._adapter_index(loaded, Path(lora_path), lora_scale)
            except ModelFileError:
                llm.close()
                raise
        for path in lora_adapters:  # the library's: one that does not apply is refused when a request names it
            try:
                self._adapter_index(loaded, Path(path))
            except ModelFileError as error:
                log.warning("%s", error)
        if draft_model_path:
            try:
                loaded.draft = _draft_weights(llm, Path(draft_model_path), n_gpu_layers, kwargs)
            except ModelFileError:
                llm.close()
                raise
        loaded.n_batch = max(n_batch, parallel)  # every generating slot puts its next token in each step
        try:  # before the engine: a template that does not render frees only the weights
            loaded.chat_format = _chat_format(loaded, chat_template, jinja)
        except ChatTemplateError:
            llm.close()
            raise
        loaded.template_override = chat_template is not None or not jinja
        loaded.n_ctx = n_ctx or llama_cpp.llama_model_n_ctx_train(llm.model)
        # A file that names its pooling is an embedding model (BERT-type): it gets no chat engine, and
        # inputs no longer than it was trained on (its positions end there).
        if header.arch_value("pooling_type") is None:
            host_cache = HostCache(cache_ram_mib, cache_disk_dir or None, cache_disk_mib)
            try:
                loaded.engine = self._engine(loaded, parallel, max_waiting, kv_unified, host_cache)
            except (InvalidParameterError, ModelFileError):
                llm.close()
                raise
        else:
            loaded.embeddings_only = True
            loaded.n_ctx = loaded.n_ctx_total = min(loaded.n_ctx, llama_cpp.llama_model_n_ctx_train(llm.model))
        old, self._model = self._model, loaded
        if old is not None:
            old.close()
        log.info(
            "llama.cpp loaded %s: %s of %d tokens (the context of each request), %d threads, weights in %s%s",
            header.path, f"{parallel} slots" if loaded.engine else "embeddings only", loaded.n_ctx, n_threads,
            ", ".join(f"{name} {mib:.0f} MiB" for name, mib in buffers.items()), _kv_cache_text(loaded),
        )  # fmt: skip

    def _engine(
        self, m: _Loaded, parallel: int, max_waiting: int, kv_unified: bool, host_cache: HostCache
    ) -> BatchEngine:
        llm = m.llm
        params = llm.context_params  # the load options (flash attention, KV types...) carry over
        prompt_cache = _prompt_cache(m, params, host_cache)  # first: a folder it cannot make leaks nothing
        params.n_ctx = m.n_ctx * parallel
        params.n_seq_max = parallel
        # Off: a slot's cells are its own, and outputs equal those of a solo run.
        params.kv_unified = m.kv_unified = kv_unified
        params.n_batch = params.n_ubatch = m.n_batch
        params.n_threads = params.n_threads_batch = m.n_threads  # prompt chunks use n_threads_batch
        ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not ctx:
            raise ModelFileError(m.header.path, f"llama.cpp could not make a context of {params.n_ctx} tokens")
        # Unified, a request may use every cell (llama_n_ctx_seq is all of them), up to what the model
        # was trained on, as llama-server's n_ctx_slot.
        n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)
        m.n_ctx = min(n_ctx_seq, llama_cpp.llama_model_n_ctx_train(llm.model) if kv_unified else m.n_ctx)
        m.n_ctx_total = params.n_ctx if kv_unified else m.n_ctx * parallel
        vocab = Vocabulary(
            n_vocab=llm.n_vocab(),
            piece=lambda token: _piece(m, token),
            is_end=lambda token: llama_cpp.llama_vocab_is_eog(llm._model.vocab, token),
        )
        draft = _draft_model(m, parallel) if m.draft is not None else None
        return BatchEngine(ctx, vocab, parallel, m.n_ctx, m.n_batch, max_waiting, self._on_state, kv_unified,
                           self._on_decode, prompt_cache, metrics.record_host_cache, draft)  # fmt: skip

    def keep_states(self) -> None:
        m = self._model
        if m is not None and m.engine is not None:
            m.engine.keep_states()

    def unload(self) -> None:
        m, self._model = self._model, None
        if m is not None:
            m.close()

    def info(self) -> dict[str, Any]:
        m = self._model
        if m is None:
            return {"backend": self.name, "available": self.available, "loaded": False}
        h = m.header
        host_cache = m.engine.prompt_cache if m.engine else None
        return {
            "backend": self.name,
            "available": True,
            "loaded": True,
            "model": self.model_name,
            "path": str(h.path),
            "architecture": h.architecture,
            "quantization": file_type_name(h.metadata.get("general.file_type")),
            "size_bytes": h.file_size,
            "n_params": llama_cpp.llama_model_n_params(m.llm.model),
            "n_ctx": m.n_ctx,  # per request: each slot has its own, or with kv_unified all of them
            "embeddings_only": m.embeddings_only,
            "parallel": m.engine.n_slots if m.engine else 0,
            "n_ctx_total": m.n_ctx_total,
            "kv_unified": m.kv_unified,
            "n_ctx_train": h.arch_value("context_length"),
            "n_threads": m.n_threads,
            "n_gpu_layers": m.n_gpu_layers,
            "weight_buffers_mib": m.weight_buffers,
            "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
            "chat_template": "tokenizer.chat_template" in h.metadata,
            "chat_template_override": m.template_override,  # --chat-template(-file), --no-jinja
            "chat_template_builtin": m.chat_format.template if m.chat_format.builtin else None,
            "infill": not self._fim_tokens(m).missing(),  # it has fill-in-the-middle tokens
            "lora_adapters": [{"path": str(a.path), "scale": a.scale} for a in m.adapters],
            "draft_model": m.draft.model_path if m.draft is not None else None,
            **_kv_cache(m),
            # The host-memory prompt cache's bound (llama-server's --cache-ram); what it holds: /metrics.
            "host_cache_bytes": host_cache.budget_bytes if host_cache is not None else 0,
            # Its disk tier: the model's folder and its bound.
            "host_cache_disk": None
            if host_cache is None or host_cache.files is None
            else {"path": str(host_cache.files.folder), "bytes": host_cache.files.budget_bytes},
        }

    # -- generation ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """`add_special`: the BOS token if the model wants one; `parse_special`: special tokens
        written in the text become their ids."""
        return _tokenize(self._require(), text, add_bos=add_special, special=parse_special)

    def vocabulary_size(self) -> int:
        return self._require().llm.n_vocab()

    def slots(self) -> list[SlotState]:
        m = self._require()
        return m.engine.slots() if m.engine is not None else []

    def kv_cells(self) -> tuple[int, int]:
        m = self._model
        if m is None or m.engine is None:
            return 0, 0
        return sum(s.n_cached for s in m.engine.slots() if s.busy), m.n_ctx_total

    def token_piece(self, token_id: int) -> bytes:
        """The token's bytes, a special token as its text."""
        m = self._require()
        if not 0 <= token_id < m.llm.n_vocab():
            raise InvalidParameterError(f"token id {token_id} is outside the vocabulary (0..{m.llm.n_vocab() - 1})")
        return _token_to_piece(m.llm._model.vocab, token_id, special=True)

    def start(self, request: GenerationRequest) -> Generation:
        m = self._require()
        if m.embeddings_only:
            raise InvalidParameterError(
                f"{m.name} is an embedding model: it answers /v1/embeddings and /api/embed only", "model"
            )
        try:
            return super().start(request)
        except EngineClosedError:  # the model was swapped while this request was read: once more, on the new one
            return super().start(request)

    def embed(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], truncate: bool = False, normalize: bool = True
    ) -> Embeddings:
        """Embeddings of texts or token ids (of length 1 with `normalize`), pooled as the model's file
        says (mean where it says nothing), on a context of their own: chats keep decoding meanwhile.
        An input longer than the context is an error, or is cut to fit with `truncate`."""
        if self._owner is not self:  # a served adapter: the embedder applies no adapter, its base's serves
            return self._owner.embed(inputs, truncate, normalize)
        m = self._require()
        check_embedding_inputs(inputs)
        ids = [self._embedding_ids(m, item, truncate, i) for i, item in enumerate(inputs)]
        with self._embedder_made:
            if m.embedder is None:
                m.embedder = Embedder(m.llm.model, m.llm.context_params, m.n_ctx, m.n_threads, m.embeddings_only)
        return Embeddings(m.embedder.embed(ids, normalize), sum(map(len, ids)))

    def _embedding_ids(self, m: _Loaded, item: str | Sequence[int], truncate: bool, i: int) -> list[int]:
        if isinstance(item, str):
            ids = _tokenize(m, item, add_bos=True, special=True)
        else:
            ids = list(item)
            if not all(0 <= token < m.llm.n_vocab() for token in ids):
                raise InvalidParameterError(f"input[{i}] holds a token id outside the vocabulary", "input")
        if len(ids) > m.n_ctx and truncate:
            ids = ids[: m.n_ctx]
        check_prompt_fits(len(ids), m.n_ctx + 1, "input")  # an embedding needs no room for an answer
        return ids

    def _fim_tokens(self, m: _Loaded) -> FimTokens:
        vocab, lib = m.llm._model.vocab, llama_cpp
        kinds = (lib.llama_vocab_fim_pre, lib.llama_vocab_fim_suf, lib.llama_vocab_fim_mid, lib.llama_vocab_fim_rep,
                 lib.llama_vocab_fim_sep)  # fmt: skip
        return FimTokens(*(token if (token := kind(vocab)) >= 0 else None for kind in kinds))

    def _encode_raw(self, m: _Loaded, text: str) -> list[int]:
        return _tokenize(m, text, add_bos=True, special=True)

    def _encode_chat(self, m: _Loaded, text: str) -> list[int]:
        # Templates that write the BOS text themselves must not get a second one from the tokenizer.
        add_bos = not (m.bos_text and text.startswith(m.bos_text))
        return _tokenize(m, text, add_bos=add_bos, special=True)

    def _adapter_index(self, m: _Loaded, path: Path, scale: float = 0.0) -> int:
        """The id of the adapter at `path` in `m`, loaded now if it is not yet (at `scale` for requests
        that name none)."""
        with self._adapters_changed:
            path = path.resolve()
            for i, adapter in enumerate(m.adapters):
                if adapter.path == path:
                    return i
            pointer = llama_cpp.llama_adapter_lora_init(m.llm.model, str(path).encode())
            if not pointer:
                raise ModelFileError(path, f"llama.cpp could not apply it to {m.name} (an adapter of another model?)")
            m.adapters.append(_Adapter(path, pointer, scale))
            return len(m.adapters) - 1

    def _adapter_set(self, m: _Loaded, lora: tuple[tuple[int, float], ...] | None) -> AdapterSet:
        if lora is None:
            lora = m.own_lora if m.own_lora is not None else tuple((i, a.scale) for i, a in enumerate(m.adapters))
        key = tuple(sorted((i, scale) for i, scale in dict(_checked_lora(m, lora)).items() if scale != 0))
        return AdapterSet(key, tuple(m.adapters[i].pointer for i, _ in key))

    def _submit(
        self, m: _Loaded, prompt_ids: list[int], params: SamplingParams, clock: UsageClock
    ) -> tuple[TokenSource[Ticket], Ticket]:
        adapters = self._adapter_set(m, params.lora)  # before the sampler: a bad id leaks nothing
        ticket = Ticket(
            prompt=prompt_ids,
            sampler=RequestSampler(m.llm._model.vocab, m.llm.n_vocab(), params),
            max_new_tokens=params.max_new_tokens,
            stop=params.stop,
            logprobs=params.logprobs,
            clock=clock,
            ignore_eos=params.ignore_eos,
            progress=params.return_progress,
            post_sampling_probs=params.post_sampling_probs,
            cache_prompt=params.cache_prompt,
            adapters=adapters,
            speculation=params.speculative if params.speculative is not None else Speculation(),
        )
        engine = m.engine
        if engine is None:  # closed since this request looked: the model was unloaded or replaced
            raise EngineClosedError(f"{m.name} was unloaded")
        return engine, engine.submit(ticket)

    def _eog_tokens(self) -> tuple[int, ...]:
        m = self._require()
        if m.eog is None:  # one pass over the vocabulary, as llama-server's logit_bias_eog
            vocab = m.llm._model.vocab
            m.eog = tuple(t for t in range(m.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
        return m.eog


def _draft_weights(llm: Any, path: Path, n_gpu_layers: int, kwargs: dict[str, Any]) -> Any:
    """A draft model's weights, checked to share the model's vocabulary (their token ids must mean
    the same, or every draft is rejected)."""
    try:
        draft = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_gpu_layers=n_gpu_layers, verbose=False, **kwargs)
    except ValueError as error:
        raise ModelFileError(path, f"llama.cpp could not load it as a draft model ({error})") from None
    probe = range(0, llm.n_vocab(), max(llm.n_vocab() // 512, 1))
    same = draft.n_vocab() == llm.n_vocab() and all(
        _token_text(draft, t) == _token_text(llm, t) for t in (*probe, llm.token_eos())
    )
    if not same:
        draft.close()
        raise ModelFileError(path, "its vocabulary is not the model's, so it cannot draft for it")
    return draft


@dataclass(frozen=True)
class HostCache:
    """The host prompt cache's bounds: RAM (0: no cache) and an optional disk folder."""

    ram_mib: int
    disk_dir: str | None = None
    disk_mib: int = 4096


def _prompt_cache(m: _Loaded, params: Any, bounds: HostCache) -> PromptCache | None:
    """Its disk tier in a subfolder named for the model file and KV layout (a state fits only those),
    adapters named by their files (their ids are this process's)."""
    if not bounds.ram_mib:
        return None
    files = None
    if bounds.disk_dir:
        layout = repr((_file_identity(m.header.path), params.type_k, params.type_v, llama_cpp.__version__))
        folder = Path(bounds.disk_dir) / f"{m.header.path.stem}-{hashlib.sha256(layout.encode()).hexdigest()[:16]}"
        try:
            files = StateFiles(folder, bounds.disk_mib << 20)
        except OSError as error:
            raise InvalidParameterError(f"cache_disk_dir: {error}", "cache_disk_dir") from None

    def names(key: tuple) -> tuple:
        return tuple((_file_identity(m.adapters[i].path), scale) for i, scale in key)

    return PromptCache(bounds.ram_mib << 20, files, names)


def _file_identity(path: Path) -> str:
    """A file's path, size and time: a file changed since is another file."""
    try:
        stat = path.stat()
    except OSError:  # an adapter deleted while loaded: its states match no file
        return f"{path}|gone"
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _draft_model(m: _Loaded, parallel: int) -> DraftModel:
    """The draft model's context: a sequence per slot, each with the slot's n_ctx."""
    params = m.draft.context_params
    params.n_ctx, params.n_seq_max, params.kv_unified = m.n_ctx * parallel, parallel, False
    params.n_batch = params.n_ubatch = m.n_batch
    params.n_threads = params.n_threads_batch = m.n_threads
    ctx = llama_cpp.llama_init_from_model(m.draft.model, params)
    if not ctx:
        raise ModelFileError(m.header.path, f"llama.cpp could not make the draft model a context of {params.n_ctx}")
    return DraftModel(ctx, m.draft.n_vocab(), parallel, m.n_batch)


def _kv_cache(m: _Loaded) -> dict[str, Any]:
    """The KV cache's types and the memory its cells take (all slots; one slot's share): computed from
    the GGUF's numbers, as llama.cpp sizes it (None where the architecture's are unknown)."""
    params = m.llm.context_params
    per_token = kv_bytes_per_token(m.header, params.type_k, params.type_v) if not m.embeddings_only else None
    total = None if per_token is None else per_token * m.n_ctx_total
    slots = m.engine.n_slots if m.engine else 1
    return {"cache_type_k": cache_type_name(params.type_k), "cache_type_v": cache_type_name(params.type_v),
            "kv_cache_bytes": total, "kv_cache_bytes_per_slot": None if total is None else total // slots}  # fmt: skip


def _kv_cache_text(m: _Loaded) -> str:
    kv = _kv_cache(m)
    if kv["kv_cache_bytes"] is None:
        return ""
    mib = 1 << 20
    return (f"; KV cache {kv['cache_type_k']}/{kv['cache_type_v']} {kv['kv_cache_bytes'] / mib:.0f} MiB, "
            f"{kv['kv_cache_bytes_per_slot'] / mib:.1f} MiB per slot")  # fmt: skip


def _checked_lora(m: _Loaded, lora: Sequence[tuple[int, float]]) -> Sequence[tuple[int, float]]:
    for i, _ in lora:
        if not 0 <= i < len(m.adapters):
            known = f"ids 0..{len(m.adapters) - 1}" if m.adapters else "none"
            message = f"lora: {m.name} has no adapter {i} (its adapters: {known}; GET /lora-adapters)"
            raise InvalidParameterError(message, "lora")
    return lora


def _tokenize(m: _Loaded, text: str, add_bos: bool, special: bool) -> list[int]:
    return m.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


def _piece(m: _Loaded, token: int) -> bytes:
    """A token's bytes, special tokens rendered as nothing. Cached: the vocabulary never changes."""
    piece = m.pieces.get(token)
    if piece is None:
        piece = m.pieces[token] = _token_to_piece(m.llm._model.vocab, token, special=False)
    return piece


def _token_to_piece(vocab: Any, token: int, special: bool) -> bytes:
    # llama-cpp-python's own detokenize uses a fixed 32-byte buffer and garbles longer pieces.
    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, special)
        if n >= 0:
            return buffer.raw[:n]
        size = -n


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    return _token_to_piece(llm._model.vocab, token, special=True).decode("utf-8", errors="replace")


def _chat_format(m: _Loaded, override: str | None = None, jinja: bool = True) -> ChatFormat:
    special = {"bos_token": m.bos_text, "eos_token": _token_text(m.llm, m.llm.token_eos())}
    template = m.header.metadata.get("tokenizer.chat_template")
    if override is not None or not jinja:  # the caller's template: one that does not render is an error
        own = template if isinstance(template, str) else "chatml"  # llama.cpp's fallback too
        return chat_templates.chat_format(override if override is not None else own, special, jinja)
    if not isinstance(template, str):
        log.warning("%s has no chat template; using ChatML", m.header.path)
        template = CHATML_TEMPLATE
    try:
        compile_template(template)
    except ChatTemplateError as error:  # the model still serves raw prompts; chats get this error
        log.warning("%s: %s", m.header.path, error)
    return ChatFormat.from_template(template, special)


def _check_load_args(
    n_ctx: Any, n_threads: Any, n_gpu_layers: Any, parallel: Any, max_waiting: Any, kwargs: dict[str, Any]
) -> None:
    ok = is_int_at_least
    if not (ok(parallel, 1) and parallel <= MAX_PARALLEL):
        raise InvalidParameterError(f"parallel must be an integer in [1, {MAX_PARALLEL}], got {parallel!r}")
    if not ok(max_waiting, 0):
        raise InvalidParameterError(f"max_waiting must be an integer >= 0, got {max_waiting!r}")
    if not ok(n_ctx, 0):
        raise InvalidParameterError(f"n_ctx must be an integer >= 0 (0 = the model's own), got {n_ctx!r}")
    if n_threads is not None and not ok(n_threads, 1):
        raise InvalidParameterError(f"n_threads must be an integer >= 1 or None, got {n_threads!r}")
    if not ok(n_gpu_layers, -1):
        raise InvalidParameterError(f"n_gpu_layers must be an integer >= -1 (-1 = all), got {n_gpu_layers!r}")
    accepted = inspect.signature(llama_cpp.Llama.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in accepted or k in ("model_path", "n_ctx", "n_threads_batch"))
    if unknown:
        raise InvalidParameterError(f"unknown llama.cpp load option(s): {', '.join(unknown)}")


llamacpp_service = LlamaCppBackend(
    on_state=partial(metrics.set_scheduler_state, LlamaCppBackend.name), on_decode=metrics.record_decode
)
