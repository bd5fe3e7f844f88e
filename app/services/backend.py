"""The one interface both inference backends implement, and the internal types they speak.

Routes and the CLI talk to a `Backend` only; they never see llama.cpp or PyTorch objects.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import Any, ClassVar, Protocol, TypedDict, Unpack

from app import metrics
from app.chat.format import ChatFormat, ChatOptions, RenderedChat, tool_name
from app.chat.tool_grammar import tool_call_grammar
from app.engine.worker import Emit, Job, Worker
from app.errors import BackendUnavailableError, InvalidParameterError, PromptTooLongError

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 16
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    grammar: str | None = None  # GBNF that the output must match (backends with supports_grammar)
    logprobs: int | None = None  # None: none; k: the sampled token's log-probability and the k most likely
    ignore_eos: bool = False  # generate max_new_tokens even past end-of-generation (benchmarks; vLLM's name)

    def __post_init__(self) -> None:
        _check(_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1")
        _check(_is_number(self.temperature) and self.temperature >= 0, "temperature must be a finite number >= 0")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(_is_int(self.top_k) and self.top_k >= 0, "top_k must be an integer >= 0 (0 disables it)")
        _check(_is_number(self.min_p) and 0 <= self.min_p <= 1, "min_p must be in [0, 1]")
        _check(
            _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty must be a finite number > 0",
        )
        _check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**32), "seed must be in [0, 2**32)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_is_number(value) and -2 <= value <= 2, f"{name} must be a number in [-2, 2]")
        _check(self.grammar is None or (isinstance(self.grammar, str) and self.grammar.strip()), "grammar is empty")
        _check(
            self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
            f"logprobs must be an integer in [0, {MAX_LOGPROBS}]",
        )
        _check(isinstance(self.ignore_eos, bool), "ignore_eos must be true or false")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        _check(
            len(stop) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) and s for s in stop),
            f"stop must be at most {MAX_STOP_SEQUENCES} non-empty strings",
        )
        object.__setattr__(self, "stop", stop)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        unknown = sorted(set(kwargs) - set(cls.__dataclass_fields__))
        _check(not unknown, f"unknown generation parameter(s): {', '.join(unknown)}")
        return cls(**kwargs)


class SamplingKwargs(TypedDict, total=False):
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    stop: Sequence[str] | str | None
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    grammar: str | None
    logprobs: int | None
    ignore_eos: bool


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidParameterError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_int_at_least(value: Any, low: int) -> bool:
    return _is_int(value) and value >= low


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Role and text of each message, plus what tool calling adds: an assistant's `tool_calls`
    (OpenAI's shape, content may then be empty), a tool result's `tool_call_id` and `name`."""
    _check(isinstance(messages, (list, tuple)) and len(messages) > 0, "messages must be a non-empty list")
    return [_checked_message(i, message) for i, message in enumerate(messages)]


def _checked_message(i: int, message: Any) -> dict[str, Any]:
    _check(isinstance(message, dict), f"messages[{i}] must be an object with role and content")
    role, content, calls = message.get("role"), message.get("content"), message.get("tool_calls")
    _check(role in ROLES, f"messages[{i}].role must be one of {', '.join(ROLES)}")
    _check(isinstance(content, str) or (content is None and bool(calls)), f"messages[{i}].content must be a string")
    checked: dict[str, Any] = {"role": role, "content": content}
    if calls:
        _check(role == "assistant" and isinstance(calls, list), f"messages[{i}].tool_calls: only assistants call tools")
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            _check(isinstance(function, dict) and isinstance(function.get("name"), str),
                   f"messages[{i}].tool_calls: each call needs function.name")  # fmt: skip
        checked["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None:
            _check(isinstance(message[key], str), f"messages[{i}].{key} must be a string")
            checked[key] = message[key]
    return checked


@dataclass(frozen=True)
class GenerationRequest:
    """Either a raw `prompt` or chat `messages` rendered with the model's template."""

    params: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    chat: ChatOptions = field(default_factory=ChatOptions)  # chats only: tools, thinking, truncation

    def __post_init__(self) -> None:
        _check((self.prompt is None) != (self.messages is None), "give exactly one of prompt or messages")
        if self.prompt is not None:
            _check(isinstance(self.prompt, str), "prompt must be a string")
        else:
            object.__setattr__(self, "messages", validate_messages(self.messages))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float  # request start to first sampled token, prompt processing included
    decode_tokens_per_s: float  # tokens after the first, over the time after the first
    total_ms: float
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused from an earlier request


class UsageClock:
    """Times one generation from request to last token; both backends report usage through it."""

    def __init__(self, prompt_tokens: int, t_start: float):
        self.prompt_tokens, self.t_start = prompt_tokens, t_start
        self.t_first: float | None = None
        self.completion_tokens = 0
        self.cached_tokens = 0

    def sampled(self) -> None:
        """A token was sampled (an end-of-generation token too: it ends the wait for the first token)."""
        self.t_first = self.t_first or perf_counter()

    def usage(self) -> Usage:
        t_end = perf_counter()
        t_first = self.t_first or t_end
        n = self.completion_tokens
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=n,
            ttft_ms=(t_first - self.t_start) * 1000,
            decode_tokens_per_s=(n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else 0.0,
            total_ms=(t_end - self.t_start) * 1000,
            cached_tokens=self.cached_tokens,
        )


@dataclass(frozen=True)
class Prompt:
    """What the model is given for a request, and what is needed to read its answer."""

    ids: list[int]
    text: str  # the rendered chat, or the raw prompt
    chat: RenderedChat | None = None  # None for a raw prompt
    tool_format: str = "json"  # how this model writes tool calls
    tool_names: tuple[str, ...] = ()  # the functions it may call ("tool_choice" none: none)
    dropped_messages: int = 0  # the oldest turns left out so that the prompt fits (ChatOptions.truncate)


def check_prompt_fits(n_prompt: int, n_ctx: int, param: str = "prompt") -> None:
    if n_prompt == 0:
        raise InvalidParameterError("prompt is empty", param)
    if n_prompt >= n_ctx:
        raise PromptTooLongError(n_prompt, n_ctx, param)


@dataclass(frozen=True)
class TopLogprob:
    token: str  # the token's text; bytes of an incomplete UTF-8 character show as U+FFFD
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob(TopLogprob):
    """The sampled token's log-probability (of the distribution before sampling filters) and the
    most likely alternatives, as `SamplingParams.logprobs` asked."""

    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the answer. The last event of a stream carries `finish_reason` and `usage`."""

    text: str
    token_id: int | None = None
    finish_reason: str | None = None  # "stop" (end of turn or stop string) | "length"
    usage: Usage | None = None
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage

    @classmethod
    def from_events(cls, events: Sequence[TokenEvent]) -> Completion:
        last = events[-1]
        return cls("".join(e.text for e in events), last.finish_reason or "stop", last.usage)


class Generation:
    """A validated request, ready to stream. Iterate it from a thread or `async for` it."""

    model_name: str | None = None
    prompt: Prompt | None = None

    def __init__(self, worker: Worker, job: Job, backend_name: str):
        self._worker, self._job, self._backend_name = worker, job, backend_name

    def __iter__(self) -> Iterator[TokenEvent]:
        with closing(self._worker.stream(self._job)) as events:  # closing cancels the job
            for event in events:
                self._record(event)
                yield event

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        async with aclosing(self._worker.astream(self._job)) as events:
            async for event in events:
                self._record(event)
                yield event

    def _record(self, event: TokenEvent) -> None:
        if event.usage is not None:  # the last event: recorded before a reader that stops at it can leave
            metrics.record_generation(self._backend_name, event.usage)


class LoadedModel(Protocol):
    n_ctx: int
    chat_format: ChatFormat  # from the model's own chat template

    @property
    def name(self) -> str: ...  # the model's file or folder name, as the API reports it


class Backend(ABC):
    """What every inference backend offers. The user-facing methods are built on `start()`; a backend
    supplies loading (its loaded model has a `chat_format`), `_encode_raw` / `_encode_chat`, and either
    `_decode` (run one at a time on the backend's worker thread) or its own `_generation` (llama.cpp's
    batching engine)."""

    name: ClassVar[str]
    label: ClassVar[str]  # for messages: "llama.cpp", "PyTorch"
    available: ClassVar[bool]
    supports_grammar: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False

    def __init__(self) -> None:
        self._model: Any = None
        self._worker: Worker | None = None

    @abstractmethod
    def load_model(self, model_path: str, **kwargs: Any) -> None: ...

    @abstractmethod
    def info(self) -> dict[str, Any]: ...

    @property
    def model_name(self) -> str | None:
        return self._model.name if self._model is not None else None

    def unload(self) -> None:
        self._model = None  # a generation in flight keeps its model alive until it ends

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def start(self, request: GenerationRequest) -> Generation:
        """Validates and tokenizes now (errors raise here), generates when iterated."""
        m = self._require()
        self._check_supported(request.params)
        t_start = perf_counter()
        prompt = self._prompt(m, request)
        check_prompt_fits(len(prompt.ids), m.n_ctx, "prompt" if request.messages is None else "messages")
        params = self._with_tool_grammar(request, prompt)
        clock = UsageClock(len(prompt.ids), t_start)
        generation = self._generation(m, prompt.ids, params, clock)
        generation.model_name = m.name  # the model that answers, even if another is loaded meanwhile
        generation.prompt = prompt
        return generation

    def prompt(self, request: GenerationRequest) -> Prompt:
        """The text and token ids the model would be given for `request`."""
        return self._prompt(self._require(), request)

    def apply_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text the model sees for `messages`, from its own chat template."""
        return self.prompt(GenerationRequest(messages=messages)).text

    @abstractmethod
    def token_piece(self, token_id: int) -> bytes:
        """The token's bytes, a special token as its text; InvalidParameterError outside the vocabulary."""

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self.token_piece(i) for i in ids).decode("utf-8", errors="replace")

    def _prompt(self, m: Any, request: GenerationRequest) -> Prompt:
        if request.messages is None:
            return Prompt(self._encode_raw(m, request.prompt or ""), request.prompt or "")
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

    def _generation(self, m: Any, prompt_ids: list[int], params: SamplingParams, clock: UsageClock) -> Generation:
        """By default a backend's generations run one at a time on its own worker thread."""
        if self._worker is None:
            self._worker = Worker(self.name)
        return Generation(self._worker, lambda emit: self._decode(m, prompt_ids, params, clock, emit), self.name)

    def _check_supported(self, params: SamplingParams) -> None:
        if params.grammar is not None and not self.supports_grammar:
            raise InvalidParameterError(f"grammars and response_format are not supported by the {self.label} backend")
        if params.logprobs is not None and not self.supports_logprobs:
            raise InvalidParameterError(f"logprobs are not supported by the {self.label} backend")

    def _install(self, loaded: LoadedModel) -> None:
        self._model = loaded

    def _require(self) -> Any:
        if self._model is None:
            raise BackendUnavailableError(f"no model is loaded in the {self.label} backend")
        return self._model

    @abstractmethod
    def _encode_raw(self, m: Any, text: str) -> list[int]:
        """A raw prompt's ids, with the BOS token the model expects."""

    @abstractmethod
    def _encode_chat(self, m: Any, text: str) -> list[int]:
        """A rendered chat's ids: special tokens as written by the template, never a second BOS."""

    @staticmethod
    def _decode(m: Any, prompt_ids: list[int], params: SamplingParams, clock: UsageClock, emit: Emit) -> None:
        """One generation on the worker thread (backends that keep the default `_generation`)."""
        raise NotImplementedError

    def generate(self, prompt: str, **gen: Unpack[SamplingKwargs]) -> str:
        return "".join(self.generate_stream(prompt, **gen))

    def generate_stream(self, prompt: str, **gen: Unpack[SamplingKwargs]) -> Iterator[str]:
        return _texts(self.start(GenerationRequest(SamplingParams.from_kwargs(**gen), prompt=prompt)))

    def chat(self, messages: list[dict[str, str]], **gen: Unpack[SamplingKwargs]) -> str:
        return "".join(self.chat_stream(messages, **gen))

    def chat_stream(self, messages: list[dict[str, str]], **gen: Unpack[SamplingKwargs]) -> Iterator[str]:
        return _texts(self.start(GenerationRequest(SamplingParams.from_kwargs(**gen), messages=messages)))


def drop_oldest_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """`messages` without the oldest turn (a user message and the answers and tool results after
    it); the system prompt and the last turn always stay. None when nothing can go."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    later_user = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"), None)
    return None if later_user is None else messages[:first] + messages[later_user:]


def _texts(generation: Generation) -> Iterator[str]:
    with closing(iter(generation)) as events:  # closing this stream cancels the generation at once
        for event in events:
            if event.text:
                yield event.text
