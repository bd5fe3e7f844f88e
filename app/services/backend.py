"""The one interface both inference backends implement, and the generation it starts.

Routes and the CLI talk to a `Backend` only; they never see llama.cpp or PyTorch objects.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, closing
from dataclasses import replace
from pathlib import Path
from time import monotonic, perf_counter
from typing import Any, ClassVar, Protocol, Unpack

from app import metrics
from app.chat.format import ChatFormat, drop_oldest_turn, tool_name
from app.chat.infill import FimTokens, infill_ids
from app.chat.tool_grammar import tool_call_grammar
from app.engine.source import TokenSource
from app.engine.worker import Emit, Task, Worker
from app.errors import BackendUnavailableError, InvalidParameterError
from app.services.checks import check_prompt_fits, checked, sampling_params
from app.types import (
    Embeddings,
    GenerationRequest,
    LoraAdapterInfo,
    Prompt,
    SamplingKwargs,
    SamplingParams,
    SlotState,
    TokenEvent,
    UsageClock,
)


class Generation:
    """A checked, tokenized request, ready to stream: iterate it from a thread or `async for` it.
    `source` runs it (the llama.cpp batch engine or the PyTorch worker); leaving the loop cancels it."""

    def __init__(
        self,
        source: TokenSource[Any],
        job: Any,
        backend_name: str,
        model_name: str,
        prompt: Prompt,
        params: SamplingParams,
        on_end: Callable[[], None] = lambda: None,
    ):
        self._source, self._job = source, job
        # Once, when its stream ends or when it is dropped unread (a slot must not wait for a reader).
        self._end = weakref.finalize(self, _end, source, job, on_end)
        self.backend_name = backend_name
        self.model_name = model_name  # the model that answers, even if another is loaded meanwhile
        self.prompt = prompt
        self.params = params  # as sampled: logit_bias in token ids (ignore_eos's bans included)

    def __iter__(self) -> Iterator[TokenEvent]:
        try:
            with closing(self._source.stream(self._job)) as events:  # closing cancels the job
                for event in events:
                    self._record(event)
                    yield event
        finally:
            self._end()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        async with aclosing(self.batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def batches(self) -> AsyncIterator[list[TokenEvent]]:
        """The events as lists of those that arrived together (TokenSource.abatches)."""
        try:
            async with aclosing(self._source.abatches(self._job)) as batches:
                async for batch in batches:
                    for event in batch:
                        self._record(event)
                    yield batch
        finally:
            self._end()

    def cancel(self) -> None:
        self._end()

    def _record(self, event: TokenEvent) -> None:
        if event.usage is not None:  # the last event: recorded before a reader that stops at it can leave
            metrics.record_generation(self.backend_name, event.usage)


def _end(source: TokenSource[Any], job: Any, on_end: Callable[[], None]) -> None:
    source.cancel(job)  # a no-op for a job that has finished
    on_end()


class LoadedModel(Protocol):
    n_ctx: int
    chat_format: ChatFormat  # from the model's own chat template

    @property
    def name(self) -> str: ...  # the model's file or folder name, as the API reports it


class Backend(ABC):
    """What every inference backend offers. The user-facing methods are built on `start()`; a backend
    supplies loading (its loaded model has a `chat_format`), `_encode_raw` / `_encode_chat`, and either
    `_decode` (run one at a time on the backend's worker thread) or its own `_submit` (llama.cpp's
    batching engine)."""

    name: ClassVar[str]
    label: ClassVar[str]  # for messages: "llama.cpp", "PyTorch"
    available: ClassVar[bool]
    supports_grammar: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False
    supports_embeddings: ClassVar[bool] = False
    supports_infill_sampler: ClassVar[bool] = False
    supports_lora: ClassVar[bool] = False  # LoRA adapters chosen per request (SamplingParams.lora)

    def __init__(self) -> None:
        self._model: Any = None
        self._worker: Worker | None = None
        self._running = 0  # generations started and not yet ended
        self._counted = threading.Lock()
        self._idle_since = monotonic()
        self._owner = self  # the backend whose model this one serves (another: llama.cpp's with_adapter)

    def sibling(self) -> Backend:
        """An empty backend of the same kind, for another model (the model library loads one per model)."""
        return type(self)()

    @property
    def running(self) -> int:
        """Generations started and not ended: a model with any is never unloaded to make room."""
        return self._owner._running

    @property
    def idle_since(self) -> float:
        """When the last generation ended (keep_alive counts from here)."""
        return self._owner._idle_since

    @idle_since.setter
    def idle_since(self, when: float) -> None:
        self._owner._idle_since = when

    def _generation_started(self) -> None:
        owner = self._owner
        with owner._counted:
            owner._running += 1

    def _generation_ended(self) -> None:
        owner = self._owner
        with owner._counted:
            owner._running -= 1
            owner._idle_since = monotonic()

    @abstractmethod
    def load_model(self, model_path: str, **kwargs: Any) -> None: ...

    @abstractmethod
    def info(self) -> dict[str, Any]: ...

    @property
    def model_name(self) -> str | None:
        return self._model.name if self._model is not None else None

    def chat_format(self) -> ChatFormat:
        """The loaded model's chat format: its template and the special tokens the template sees."""
        return self._require().chat_format

    def lora_adapters(self) -> list[LoraAdapterInfo]:
        """The loaded model's adapters that requests choose (backends with supports_lora)."""
        return []

    def set_lora_scales(self, scales: Sequence[tuple[int, float]]) -> None:
        """The adapters' scales for requests that name none (backends with supports_lora)."""
        raise InvalidParameterError(f"the {self.label} backend applies no adapter per request", "lora")

    def with_adapter(self, name: str, path: str | Path, scale: float = 1.0) -> Backend:
        """This model served as `name` with the adapter at `path` (backends with supports_lora)."""
        raise InvalidParameterError(f"the {self.label} backend applies no adapter per request", "model")

    def slots(self) -> list[SlotState]:
        """A snapshot of the slots of a backend that decodes requests together (llama.cpp's); none
        for one that runs them one at a time."""
        return []

    def kv_cells(self) -> tuple[int, int]:
        """(KV cells that running requests hold, KV cells in all), for the KV-cache utilization metric;
        (0, 0) for a backend without a shared cache of cells."""
        return 0, 0

    def unload(self) -> None:
        self._model = None  # a generation in flight keeps its model alive until it ends

    def keep_states(self) -> None:
        """At shutdown: writes what should outlive the process (llama.cpp: its prompt cache's disk tier)."""
        return  # PyTorch's: nothing

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def start(self, request: GenerationRequest) -> Generation:
        """Checks and tokenizes now (errors raise here), generates when iterated."""
        m = self._require()
        request = checked(request)
        request = replace(request, params=self._resolved_logit_bias(request.params))
        self._check_supported(request.params)
        t_start = perf_counter()
        prompt = self._prompt(m, request)
        check_prompt_fits(len(prompt.ids), m.n_ctx, "prompt" if request.messages is None else "messages")
        params = self._with_tool_grammar(request, prompt)
        source, job = self._submit(m, prompt.ids, params, UsageClock(len(prompt.ids), t_start))
        self._generation_started()
        return Generation(source, job, self.name, m.name, prompt, params, self._generation_ended)

    def prompt(self, request: GenerationRequest) -> Prompt:
        """The text and token ids the model would be given for `request`."""
        return self._prompt(self._require(), checked(request))

    def apply_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text the model sees for `messages`, from its own chat template."""
        return self.prompt(GenerationRequest(messages=messages)).text

    def embed(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], truncate: bool = False, normalize: bool = True
    ) -> Embeddings:
        """Embeddings of texts or token ids (backends with supports_embeddings)."""
        raise InvalidParameterError(f"embeddings are not served by the {self.label} backend (llama.cpp serves them)")

    async def embed_in_thread(self, *args: Any) -> Embeddings:
        """`embed` in a worker thread, counted as running from the moment it is asked for, so that
        keep_alive (a request's 0 included) or eviction never unloads the model under it."""
        self._generation_started()
        try:
            return await asyncio.to_thread(self.embed, *args)
        finally:
            self._generation_ended()

    @abstractmethod
    def vocabulary_size(self) -> int: ...

    @abstractmethod
    def token_piece(self, token_id: int) -> bytes:
        """The token's bytes, a special token as its text; InvalidParameterError outside the vocabulary."""

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self.token_piece(i) for i in ids).decode("utf-8", errors="replace")

    def _prompt(self, m: Any, request: GenerationRequest) -> Prompt:
        if request.infill is not None:
            ids = infill_ids(
                request.infill,
                self._fim_tokens(m),
                lambda text, special: self.tokenize(text, add_special=False, parse_special=special),
                self.tokenize("", add_special=True, parse_special=False),  # the BOS, where the model wants one
                m.n_ctx,
                request.params.max_new_tokens,
            )
            return Prompt(ids, self.detokenize(ids))
        if request.messages is None:
            return self._raw_prompt(m, request.prompt or "")
        fmt: ChatFormat = m.chat_format
        messages, dropped = request.messages, 0
        while True:
            rendered = fmt.render(messages, request.chat)
            ids = self._encode_chat(m, rendered.text)
            shorter = drop_oldest_turn(messages) if request.chat.truncate and len(ids) >= m.n_ctx else None
            if shorter is None:
                break
            dropped, messages = dropped + len(messages) - len(shorter), shorter
        names = tuple(fmt.tool_names(request.chat))
        return Prompt(ids, rendered.text, rendered, fmt.tool_format, names, dropped)

    def _raw_prompt(self, m: Any, prompt: str | tuple[int | str, ...]) -> Prompt:
        """A text, or token ids and texts mixed as llama-server takes them (`tokenize_mixed`): the
        model's BOS only when the first piece is a text, ids kept as they are; the text of ids is
        their detokenized text."""
        if isinstance(prompt, str):
            return Prompt(self._encode_raw(m, prompt), prompt)
        ids: list[int] = []
        for i, piece in enumerate(prompt):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids += self._encode_raw(m, piece) if i == 0 else self.tokenize(piece, add_special=False)
        n_vocab = self.vocabulary_size()
        outside = next((token for token in ids if token >= n_vocab), None)
        if outside is not None:
            message = f"prompt: token id {outside} is outside the vocabulary (0..{n_vocab - 1})"
            raise InvalidParameterError(message, "prompt")
        return Prompt(ids, self.detokenize(ids))

    def _with_tool_grammar(self, request: GenerationRequest, prompt: Prompt) -> SamplingParams:
        """`tool_choice` "required" or a named function: a grammar makes the answer that call, on a
        backend with grammars (elsewhere the answer is parsed and refused if it holds no call)."""
        chat, params = request.chat, request.params
        if not chat.calls_tools or chat.tool_choice == "auto" or not self.supports_grammar:
            return params
        if params.grammar is not None:
            raise InvalidParameterError("grammar or response_format cannot go with this tool_choice", "tool_choice")
        tools = [t for t in chat.tools if chat.tool_choice in ("required", tool_name(t))]
        think = prompt.chat.think if prompt.chat is not None else None
        grammar = tool_call_grammar(tools, prompt.tool_format, chat.parallel_tool_calls, think)
        return replace(params, grammar=grammar)

    def _submit(
        self, m: Any, prompt_ids: list[int], params: SamplingParams, clock: UsageClock
    ) -> tuple[TokenSource[Any], Any]:
        """What runs the generation, and its job there. By default a backend's generations run one at
        a time on its own worker thread."""
        if self._worker is None:
            self._worker = Worker(self.name)
        return self._worker, Task(lambda emit: self._decode(m, prompt_ids, params, clock, emit))

    def _eog_tokens(self) -> Sequence[int]:
        """The loaded model's end-of-generation tokens (none known: ignore_eos bans nothing by bias)."""
        return ()

    def _resolved_logit_bias(self, params: SamplingParams) -> SamplingParams:
        """Token ids for the texts in `logit_bias` (each of a text's tokens gets its bias, as in
        llama-server); an id outside the vocabulary is a 400. With ignore_eos, every end-of-generation
        token follows with a -inf bias, as llama-server adds them: the model never picks one."""
        n_vocab = None
        resolved: list[tuple[int | str, float]] = []
        for key, bias in params.logit_bias:
            if isinstance(key, str):
                resolved += [(token, bias) for token in self.tokenize(key, add_special=False, parse_special=False)]
                continue
            n_vocab = n_vocab or self.vocabulary_size()
            if key >= n_vocab:
                raise InvalidParameterError(f"logit_bias: token id {key} is outside the vocabulary", "logit_bias")
            resolved.append((key, bias))
        if params.ignore_eos:
            resolved += [(token, -math.inf) for token in self._eog_tokens()]
        return replace(params, logit_bias=tuple(resolved))

    def _check_supported(self, params: SamplingParams) -> None:
        if params.grammar is not None and not self.supports_grammar:
            raise InvalidParameterError(f"grammars and response_format are not supported by the {self.label} backend")
        if params.infill and not self.supports_infill_sampler:
            raise InvalidParameterError(f"the infill sampler is not supported by the {self.label} backend", "samplers")
        if params.logprobs is not None and not self.supports_logprobs:
            raise InvalidParameterError(f"logprobs are not supported by the {self.label} backend")
        if params.lora is not None and not self.supports_lora:
            raise InvalidParameterError(f"per-request LoRA adapters are not served by the {self.label} backend", "lora")

    def _install(self, loaded: LoadedModel) -> None:
        self._model = loaded

    def _require(self) -> Any:
        if self._model is None:
            raise BackendUnavailableError(f"no model is loaded in the {self.label} backend")
        return self._model

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """`add_special`: the tokens the model adds around a text (BOS...); `parse_special`: special
        tokens written in the text become their ids."""

    @abstractmethod
    def _fim_tokens(self, m: Any) -> FimTokens:
        """The model's fill-in-the-middle tokens (none: it cannot infill)."""

    @abstractmethod
    def _encode_raw(self, m: Any, text: str) -> list[int]:
        """A raw prompt's ids, with the BOS token the model expects."""

    @abstractmethod
    def _encode_chat(self, m: Any, text: str) -> list[int]:
        """A rendered chat's ids: special tokens as written by the template, never a second BOS."""

    @staticmethod
    def _decode(m: Any, prompt_ids: list[int], params: SamplingParams, clock: UsageClock, emit: Emit) -> None:
        """One generation on the worker thread (backends that keep the default `_submit`)."""
        raise NotImplementedError

    def generate(self, prompt: str, **gen: Unpack[SamplingKwargs]) -> str:
        return "".join(self.generate_stream(prompt, **gen))

    def generate_stream(self, prompt: str, **gen: Unpack[SamplingKwargs]) -> Iterator[str]:
        return _texts(self.start(GenerationRequest(sampling_params(**gen), prompt=prompt)))

    def chat(self, messages: list[dict[str, str]], **gen: Unpack[SamplingKwargs]) -> str:
        return "".join(self.chat_stream(messages, **gen))

    def chat_stream(self, messages: list[dict[str, str]], **gen: Unpack[SamplingKwargs]) -> Iterator[str]:
        return _texts(self.start(GenerationRequest(sampling_params(**gen), messages=messages)))


def _texts(generation: Generation) -> Iterator[str]:
    with closing(iter(generation)) as events:  # closing this stream cancels the generation at once
        for event in events:
            if event.text:
                yield event.text
