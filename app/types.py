"""The types every layer speaks: a generation request, its sampling parameters and chat options, the
prompt made of it, the token events that come back, usage and log-probabilities.

A leaf: it imports nothing of the app, so the engine, the chat semantics, the backends and the
dialects can all depend on it. The values are checked once, by the backend that starts the request
(`app.services.checks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal, TypedDict

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 16
MAX_LOGPROBS = 20
MAX_EMBEDDING_INPUTS = 512  # texts (or token lists) in one embeddings request

ToolChoice = Literal["auto", "none", "required"] | str  # or the name of one function


SpecType = Literal["none", "ngram", "draft"]


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding (llama.cpp backend): tokens drafted from the request's own prompt and output
    (ngram, prompt lookup: what followed an earlier occurrence of its last `ngram_size_n` tokens) or by
    the model's draft model (draft; a model without one drafts by ngram), verified together in one
    decode step. The output is the same as without: each position is sampled from the model as
    always, and a draft token counts only where it equals that sample. How many tokens are drafted
    adapts to the acceptance measured and to what a longer step costs, up to `n_max`."""

    type: SpecType = "ngram"  # "none": no drafting
    n_max: int = 64  # most draft tokens verified in one step (llama-server's --spec-draft-n-max)
    n_min: int = 0  # a shorter draft is not verified (--spec-draft-n-min)
    ngram_size_n: int = 3  # tokens matched to find a draft (--spec-ngram-size-n)
    ngram_min_hits: int = 1  # times they must have occurred before (--spec-ngram-min-hits)
    p_min: float = 0.0  # a draft model's draft stops at a token it gives less (--spec-draft-p-min)


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
    # With logprobs: those of the distribution the sampler chain drew from (after penalties, top-k,
    # top-p, min-p, temperature; only the tokens left), not the model's (llama-server's post_sampling_probs).
    post_sampling_probs: bool = False
    # Generate max_new_tokens even past end-of-generation (benchmarks; vLLM's name): every
    # end-of-generation token gets a -inf logit bias, as in llama-server.
    ignore_eos: bool = False
    # Added to a token's logit before sampling (-inf bans it): a token id, or a text whose tokens all
    # get the bias (the backend resolves it).
    logit_bias: tuple[tuple[int | str, float], ...] = ()
    infill: bool = False  # llama.cpp's infill sampler (llama-server's `samplers: [..., "infill"]`), for code
    # Also stream how far the prompt is read (PromptProgress events), where the backend reads it in batches
    # (llama.cpp's engine; PyTorch reads a prompt in one pass and sends none).
    return_progress: bool = False
    # llama-server's cache_prompt: false: the whole prompt is read again, nothing a slot holds is reused.
    cache_prompt: bool = True
    # The model's LoRA adapters this request runs with, llama-server's per-request `lora`: (adapter id,
    # scale) pairs, the ids of `GET /lora-adapters`; an adapter not named gets scale 0. None: the
    # served model's own (the configured adapter at its scale, or the adapter a model name stands for).
    lora: tuple[tuple[int, float], ...] | None = None
    # Speculative decoding of this request (llama-server's `speculative.*`); None: the model's default.
    speculative: Speculation | None = None


class SamplingKwargs(TypedDict, total=False):
    """`SamplingParams` as keyword arguments of the Python API (`generate(prompt, **kwargs)`)."""

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
    post_sampling_probs: bool
    ignore_eos: bool
    logit_bias: Sequence[tuple[int | str, float]]
    infill: bool


@dataclass(frozen=True)
class ChatOptions:
    """How a chat request wants its prompt rendered and its output read (beyond sampling)."""

    tools: tuple[Mapping[str, Any], ...] = ()  # OpenAI tool definitions: {"type": "function", "function": {...}}
    tool_choice: ToolChoice = "auto"  # "auto" | "none" | "required" | a function's name
    parallel_tool_calls: bool = True
    think: bool | None = None  # None: the model's own default
    reasoning_format: Literal["auto", "none"] = "auto"  # "none": the raw text, tags and all
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # chat_template_kwargs
    truncate: bool = False  # drop the oldest turns (never the system prompt) when the prompt does not fit
    # The answer continues the last message, an assistant's (a prefill); None: when the conversation
    # ends with one and add_generation_prompt is not asked for (llama-server's rule).
    continue_final_message: bool | None = None
    add_generation_prompt: bool | None = None  # None: unless the last message is continued

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def continues(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the answer continues the last message rather than starting a turn of its own."""
        if self.continue_final_message is not None:
            return self.continue_final_message
        last = messages[-1] if messages else {}
        prefill = last.get("role") == "assistant" and bool(last.get("content")) and not last.get("tool_calls")
        return prefill and self.add_generation_prompt is not True

    @property
    def enable_thinking(self) -> bool | None:
        value = self.template_kwargs.get("enable_thinking", self.think)
        return None if value is None else bool(value)


@dataclass(frozen=True)
class Infill:
    """Fill-in-the-middle: the code before the cursor and after it, other files of the project as
    (filename, text), and the start of the line being written (llama-server's /infill)."""

    prefix: str
    suffix: str
    extra: tuple[tuple[str, str], ...] = ()
    prompt: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """A raw `prompt`, chat `messages` (OpenAI's shape) rendered with the model's template, or an
    `infill` in the model's fill-in-the-middle tokens."""

    params: SamplingParams = field(default_factory=SamplingParams)
    # A raw prompt: a text, or token ids, or both mixed (llama-server's prompts): the texts are tokenized
    # (the model's BOS before the first piece only when that piece is a text), the ids kept as they are.
    prompt: str | tuple[int | str, ...] | None = None
    messages: list[dict[str, Any]] | None = None
    chat: ChatOptions = field(default_factory=ChatOptions)  # chats only: tools, thinking, truncation
    infill: Infill | None = None


@dataclass(frozen=True)
class LoraAdapterInfo:
    """One of a model's LoRA adapters: its id (the `lora` field's), its file, its scale for requests
    that name no adapters."""

    id: int
    path: str
    scale: float


@dataclass(frozen=True)
class RenderedChat:
    text: str
    think: Literal["open", "closed"] | None  # the prompt ends in an open <think> block, or just after one

    @property
    def in_reasoning(self) -> bool:
        """The output starts as reasoning."""
        return self.think == "open"


@dataclass(frozen=True)
class Prompt:
    """What the model is given for a request, and what is needed to read its answer."""

    ids: list[int]
    text: str  # the rendered chat, or the raw prompt
    chat: RenderedChat | None = None  # None for a raw prompt
    tool_format: str = "json"  # how this model writes tool calls
    tool_names: tuple[str, ...] = ()  # the functions it may call ("tool_choice" none: none)
    dropped_messages: int = 0  # the oldest turns left out so that the prompt fits (ChatOptions.truncate)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float  # request start to first sampled token, prompt processing included
    decode_tokens_per_s: float  # tokens after the first, over the time after the first
    total_ms: float
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused from an earlier request
    drafted_tokens: int = 0  # speculative decoding: tokens drafted and verified
    accepted_tokens: int = 0  # of them, those that were the model's own next tokens
    drafts: int = 0  # the steps that verified a draft


class UsageClock:
    """Times one generation from request to last token; both backends report usage through it."""

    def __init__(self, prompt_tokens: int, t_start: float):
        self.prompt_tokens, self.t_start = prompt_tokens, t_start
        self.t_first: float | None = None
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.drafted_tokens = self.accepted_tokens = self.drafts = 0

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
            drafted_tokens=self.drafted_tokens,
            accepted_tokens=self.accepted_tokens,
            drafts=self.drafts,
        )


@dataclass(frozen=True)
class TopLogprob:
    token: str  # the token's text; bytes of an incomplete UTF-8 character show as U+FFFD
    bytes: bytes
    logprob: float
    id: int = -1  # the token id (-1: not known)


@dataclass(frozen=True)
class TokenLogprob(TopLogprob):
    """The sampled token's log-probability (of the model's distribution, or with
    `SamplingParams.post_sampling_probs` of the one the sampler chain drew from) and the most likely
    alternatives, as `SamplingParams.logprobs` asked."""

    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class PromptProgress:
    """How far the engine has read a request's prompt (llama-server's `prompt_progress`): sent, when
    asked for, once the request has its slot and after each batch of its prompt."""

    total: int  # the prompt's tokens
    cache: int  # of them, reused from the slot's cells
    processed: int  # of them, in the slot's cells now (the cached ones included)
    time_ms: float  # since the request got its slot

    @property
    def prompt_ms(self) -> float:
        """Time spent decoding the prompt so far (0 before its first batch)."""
        return self.time_ms if self.processed > self.cache else 0.0


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the answer. The last event of a stream carries `finish_reason` and `usage`; a
    `progress` event (asked for with `return_progress`) carries no text, before the first token."""

    text: str
    token_id: int | None = None
    finish_reason: str | None = None  # "stop" (end of turn or stop string) | "length"
    usage: Usage | None = None
    logprob: TokenLogprob | None = None
    stop_sequence: str | None = None  # the last event: the request's stop string that ended the answer
    progress: PromptProgress | None = None


@dataclass(frozen=True)
class SlotState:
    """One slot of llama.cpp's batch engine as a snapshot shows it (GET /slots): idle, or the request
    it runs and how far that request is."""

    index: int
    busy: bool
    n_cached: int  # tokens whose KV cells the slot holds (its last request's, kept for the next one)
    n_prompt: int = 0  # the running request's prompt tokens
    n_prompt_cached: int = 0  # of them, reused from the slot's cells
    n_decoded: int = 0  # tokens generated so far
    max_new_tokens: int = 0  # the running request's bound
    speculative: bool = False  # the running request drafts (speculative decoding)


@dataclass(frozen=True)
class Embeddings:
    vectors: Any  # numpy float32 [n_inputs, n_embd], each of length 1
    prompt_tokens: int
