"""llama-server's native answers (server-task.cpp's `to_json_non_oaicompat`): a completion, the
chunks of a streamed one, `GET /props` and `GET /slots`, built from the chat path's deltas and the
backend's own reports. The requests: `llama_server.py`.

Filled only where hychat knows the truth. Not given: the slot that answered (`id_slot` is -1, as in
llama-server's stream chunks), and the fields of samplers hychat does not have beyond their "off"
values.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, RootModel

from app.chat.format import ChatFormat
from app.chat.output import Answer, ChatDelta
from app.protocol.llama_server import CHAIN, RANDOM_SEED, Cutoff
from app.protocol.openai_answers import PromptProgressBody, Timings, TimingsSoFar, progress_body, timings
from app.types import LoraAdapterInfo, SamplingParams, SlotState, TokenLogprob, TopLogprob

StopType = Literal["none", "eos", "limit", "word"]

# -- bodies -------------------------------------------------------------------------------------


class TopProbability(BaseModel):
    id: int  # the token id
    token: str
    bytes: list[int]
    logprob: float  # of the model's distribution, before sampling


class TokenProbability(TopProbability):
    top_logprobs: list[TopProbability]


class TopPostProbability(BaseModel):
    """With `post_sampling_probs`: a probability of the distribution the sampler chain drew from."""

    id: int
    token: str
    bytes: list[int]
    prob: float


class TokenPostProbability(TopPostProbability):
    top_probs: list[TopPostProbability]  # the most likely of those the chain left, none of probability 0


Probabilities = list[TokenProbability] | list[TokenPostProbability]


class LogitBiasEntry(BaseModel):
    bias: float | None  # null: -inf, the token is banned
    token: int


class GenerationSettings(BaseModel):
    """The sampling a request got. hychat's chain is penalties, top_k, top_p, min_p, temperature; the
    samplers it does not have show llama-server's "off" values."""

    n_predict: int
    max_tokens: int
    seed: int  # 4294967295: a fresh draw
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    stop: list[str]
    ignore_eos: bool
    logit_bias: list[LogitBiasEntry]  # in token ids; with ignore_eos each end-of-generation token's ban follows
    stream: bool
    n_probs: int
    post_sampling_probs: bool
    grammar: str
    samplers: list[str]
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_n_sigma: float = -1.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    typical_p: float = 1.0
    dry_multiplier: float = 0.0
    mirostat: int = 0
    adaptive_target: float = -1.0
    adaptive_decay: float = 0.9
    min_keep: int = 0


class CompletionChunk(BaseModel):
    """A streamed piece: each token's text (possibly empty while a stop string or a character is
    held back), or with `return_progress` how far the prompt is read (no text)."""

    index: int
    content: str
    tokens: list[int]
    stop: Literal[False] = False
    id_slot: int = -1
    tokens_predicted: int
    tokens_evaluated: int
    completion_probabilities: Probabilities | None = None  # with n_probs
    timings: Timings | None = None  # with timings_per_token: so far
    prompt_progress: PromptProgressBody | None = None


class CompletionResponse(BaseModel):
    """A whole answer, or a stream's last event (its content was streamed before: empty here)."""

    index: int
    content: str
    tokens: list[int]
    id_slot: int = -1
    stop: Literal[True] = True
    model: str
    tokens_predicted: int
    tokens_evaluated: int
    generation_settings: GenerationSettings
    prompt: str
    has_new_line: bool
    truncated: bool  # the context ended it, not n_predict
    stop_type: StopType
    stopping_word: str
    tokens_cached: int
    timings: Timings
    completion_probabilities: Probabilities | None = None  # with n_probs, not streamed


class SelectedFields(RootModel[dict[str, Any]]):
    """With `response_fields`: only those fields of the answer, each under its path ("timings/prompt_n")."""


class DefaultGenerationSettings(BaseModel):
    n_ctx: int  # of each request (slot)
    params: GenerationSettings


class Modalities(BaseModel):
    vision: bool = False
    audio: bool = False
    video: bool = False


class PropsResponse(BaseModel):
    default_generation_settings: DefaultGenerationSettings  # what a /completion with no fields gets
    total_slots: int
    model_alias: str
    model_path: str
    modalities: Modalities
    endpoint_slots: bool
    endpoint_props: bool  # POST /props: not served
    endpoint_metrics: bool
    chat_template: str  # the Jinja template chats are rendered with (or the llama.cpp built-in's name)
    bos_token: str
    eos_token: str
    build_info: str
    is_sleeping: bool = False


class NextToken(BaseModel):
    has_next_token: bool
    n_remain: int
    n_decoded: int


class LoraAdapterResponse(BaseModel):
    """One of the model's LoRA adapters (GET /lora-adapters), as llama-server lists them."""

    id: int
    path: str
    scale: float  # for requests that name no adapters
    task_name: str = ""  # llama-server's, from an adapter's metadata: none here
    prompt_prefix: str = ""


class SlotResponse(BaseModel):
    id: int
    n_ctx: int
    speculative: bool = False
    is_processing: bool
    n_prompt_tokens: int | None = None  # these three: while it runs a request
    n_prompt_tokens_cache: int | None = None
    next_token: list[NextToken] | None = None
    n_cached: int  # not llama-server's: tokens whose KV cells the slot holds


# -- a completion read from the chat path's deltas ------------------------------------------------


@dataclass(frozen=True)
class AnswerMeta:
    """What every answer of a request reports beside its text."""

    model: str
    prompt: str  # as the model got it (token ids as their text)
    prompt_tokens: int
    params: SamplingParams
    stream: bool
    response_fields: tuple[str, ...] | None
    return_tokens: bool = False
    timings_per_token: bool = False


class CompletionReader:
    """One answer, fed the deltas of its stream: the chunks to stream, whether it is over (its last
    delta, or an n_indent / t_max_predict_ms cut: then its reader stops reading, which cancels the
    generation) and the whole answer."""

    def __init__(self, index: int, meta: AnswerMeta, cutoff: Cutoff, clock: Callable[[], float] = time.monotonic):
        self.index, self.meta, self.cutoff, self._clock = index, meta, cutoff, clock
        self.text = ""
        self.tokens: list[int] = []
        self.probs: list[TokenLogprob] = []
        self.stop_type: StopType = "none"
        self._last: ChatDelta | None = None
        self._line = 0  # where the next new line to judge for n_indent may start
        self.timed = TimingsSoFar(meta.prompt_tokens, clock)

    @property
    def done(self) -> bool:
        return self.stop_type != "none"

    @property
    def cut(self) -> bool:
        """Over before its last delta came (n_indent, t_max_predict_ms): its generation must stop."""
        return self.done and self._last is None

    def feed(self, delta: ChatDelta) -> list[CompletionChunk]:
        if delta.progress is not None:  # no text: how far the prompt is read
            p = self.timed.progress = delta.progress
            return [self._chunk("", [], None, progress_body(p))]
        is_token = delta.finish_reason is None  # every delta but the last is a sampled token
        if is_token:
            self.timed.token(len(delta.tokens))
        content = self._cut(delta.content)
        self.text += content
        self.tokens += delta.tokens
        if delta.logprob is not None:
            self.probs.append(delta.logprob)
        if not is_token:  # a cut in its text (stop_type set) stays the reason
            self._last, self.stop_type = delta, self.stop_type if self.done else _stop_type(delta)
        if not (is_token or content):
            return []
        params = self.meta.params
        with_probs = delta.logprob is not None and params.logprobs
        probs = [_probability(delta.logprob, params.post_sampling_probs)] if with_probs else None
        return [self._chunk(content, list(delta.tokens), probs)]

    def _chunk(
        self, content: str, tokens: list[int], probs: Any, progress: PromptProgressBody | None = None
    ) -> CompletionChunk:
        return CompletionChunk(
            index=self.index,
            content=content,
            tokens=tokens,
            tokens_predicted=self.timed.n_decoded,
            tokens_evaluated=self.meta.prompt_tokens,
            completion_probabilities=probs,
            timings=self.timed.now() if self.meta.timings_per_token else None,
            prompt_progress=progress,
        )

    def final(self) -> dict[str, Any]:
        """The last event of a stream (its text went out before), or the whole answer."""
        meta, last = self.meta, self._last
        usage = last.usage if last is not None else None
        # "length" before n_predict's tokens: the context was full (llama-server's `truncated`).
        out_of_context = usage is not None and usage.completion_tokens < meta.params.max_new_tokens
        probs = None if meta.stream or not meta.params.logprobs else self._probabilities()
        body = CompletionResponse(
            index=self.index,
            content="" if meta.stream else self.text,
            tokens=self.tokens if meta.return_tokens and not meta.stream else [],
            model=meta.model,
            tokens_predicted=usage.completion_tokens if usage else self.timed.n_decoded,
            tokens_evaluated=meta.prompt_tokens,
            generation_settings=generation_settings(meta.params, meta.stream),
            prompt=meta.prompt,
            has_new_line="\n" in self.text,
            truncated=self.stop_type == "limit" and out_of_context,
            stop_type=self.stop_type,
            stopping_word=(last.stop_sequence or "") if last else "",
            tokens_cached=usage.cached_tokens if usage else 0,
            timings=timings(usage) if usage else self.timed.now(),  # cut short: measured here
            completion_probabilities=probs,
        ).model_dump(mode="json", exclude={"completion_probabilities"} if probs is None else None)  # a null bias stays
        return body if meta.response_fields is None else selected(body, meta.response_fields)

    def _probabilities(self) -> Probabilities:
        return [_probability(p, self.meta.params.post_sampling_probs) for p in self.probs]  # type: ignore[return-value]

    def _cut(self, content: str) -> str:
        """The delta's text up to where n_indent or t_max_predict_ms end the answer (then: done)."""
        n_indent, budget_ms = self.cutoff.n_indent, self.cutoff.t_max_predict_ms
        if n_indent:
            end, self._line = short_line(self.text + content, n_indent, self._line)
            if end is not None:
                self.stop_type = "limit"
                return (self.text + content)[len(self.text) : end]
        late = budget_ms and self.timed.since_first_ms() > budget_ms
        if late and "\n" in content:  # llama-server: once late, the next token with a new line is the last
            self.stop_type = "limit"
        return content


def verbose_body(answer: Answer, meta: AnswerMeta) -> dict[str, Any]:
    """llama-server's `__verbose` on an OpenAI answer (`verbose: true`): the answer as its /completion
    gives it, read from the whole text as one piece and the answer's end."""
    reader = CompletionReader(0, meta, Cutoff())
    reader.feed(ChatDelta(content=answer.content))
    reader.feed(ChatDelta(finish_reason=answer.finish_reason, usage=answer.usage, stop_sequence=answer.stop_sequence))
    return reader.final()


def short_line(text: str, n_indent: int, since: int) -> tuple[int | None, int]:
    """For n_indent: the end of the indentation of the first line after `since` that holds anything
    after fewer than `n_indent` spaces or tabs (llama-server keeps the text up to there), or None;
    and where to look next (a line with nothing after its indentation yet is judged later)."""
    at = text.find("\n", since)
    while at != -1:
        start = at + 1
        rest = text[start:]
        indent = len(rest) - len(rest.lstrip(" \t"))
        if start + indent == len(text):
            return None, at
        if indent < n_indent:
            return start + indent, at
        at = text.find("\n", start)
    return None, len(text)


def selected(body: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """llama-server's json_get_nested_values: each path ("timings/prompt_n") that exists, under its path."""
    found = {}
    for path in paths:
        value: Any = body
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            found[path] = value
    return found


def _stop_type(last: ChatDelta) -> StopType:
    if last.finish_reason == "length":
        return "limit"
    return "word" if last.stop_sequence else "eos"


def _probability(lp: TokenLogprob, post_sampling: bool) -> TokenProbability | TokenPostProbability:
    """llama-server's entry: log-probabilities, or with post_sampling_probs probabilities (the engine
    gives their logs)."""

    def fields(t: TopLogprob) -> dict[str, Any]:
        value = {"prob": math.exp(t.logprob)} if post_sampling else {"logprob": t.logprob}
        return {"id": t.id, "token": t.token, "bytes": list(t.bytes), **value}

    if post_sampling:
        return TokenPostProbability(**fields(lp), top_probs=[TopPostProbability(**fields(t)) for t in lp.top])
    return TokenProbability(**fields(lp), top_logprobs=[TopProbability(**fields(t)) for t in lp.top])


def generation_settings(p: SamplingParams, stream: bool) -> GenerationSettings:
    return GenerationSettings(
        n_predict=p.max_new_tokens,
        max_tokens=p.max_new_tokens,
        seed=RANDOM_SEED if p.seed is None else p.seed,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        min_p=p.min_p,
        repeat_penalty=p.repetition_penalty,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        stop=list(p.stop),
        ignore_eos=p.ignore_eos,
        # As sampled (the backend made texts token ids); -inf shows as null, as llama-server's JSON has it.
        logit_bias=[LogitBiasEntry(bias=b if math.isfinite(b) else None, token=t) for t, b in p.logit_bias],
        stream=stream,
        n_probs=p.logprobs or 0,
        post_sampling_probs=p.post_sampling_probs,
        grammar=p.grammar or "",
        samplers=list(CHAIN),
    )


# -- GET /props, GET /slots -----------------------------------------------------------------------


def props_response(
    info: dict[str, Any],
    fmt: ChatFormat,
    defaults: SamplingParams,
    model: str,
    endpoint_slots: bool,
    endpoint_metrics: bool = True,
) -> PropsResponse:
    """`info`: the backend's own report (Backend.info()); `defaults`: what a request without sampling
    fields gets."""
    return PropsResponse(
        default_generation_settings=DefaultGenerationSettings(
            n_ctx=info["n_ctx"], params=generation_settings(defaults, False)
        ),
        total_slots=info.get("parallel", 1),
        model_alias=model,
        model_path=info.get("path", ""),
        modalities=Modalities(),
        endpoint_slots=endpoint_slots,
        endpoint_props=False,
        endpoint_metrics=endpoint_metrics,
        chat_template=fmt.template,
        bos_token=fmt.special_tokens.get("bos_token", ""),
        eos_token=fmt.special_tokens.get("eos_token", ""),
        build_info=build_info(),
    )


def build_info() -> str:
    try:
        llama = f", llama-cpp-python {importlib.metadata.version('llama_cpp_python')}"
    except importlib.metadata.PackageNotFoundError:
        llama = ""
    return f"hychat {importlib.metadata.version('hychat')}{llama}"


def lora_adapters_response(adapters: Sequence[LoraAdapterInfo]) -> list[LoraAdapterResponse]:
    return [LoraAdapterResponse(id=a.id, path=a.path, scale=a.scale) for a in adapters]


def slots_response(slots: Sequence[SlotState], n_ctx: int) -> list[dict[str, Any]]:
    return [_slot(slot, n_ctx).model_dump(exclude_none=True) for slot in slots]


def _slot(slot: SlotState, n_ctx: int) -> SlotResponse:
    if not slot.busy:
        return SlotResponse(id=slot.index, n_ctx=n_ctx, is_processing=False, n_cached=slot.n_cached)
    next_token = NextToken(has_next_token=True, n_remain=slot.max_new_tokens - slot.n_decoded, n_decoded=slot.n_decoded)
    return SlotResponse(
        id=slot.index,
        n_ctx=n_ctx,
        is_processing=True,
        n_prompt_tokens=slot.n_prompt,
        n_prompt_tokens_cache=slot.n_prompt_cached,
        next_token=[next_token],
        n_cached=slot.n_cached,
        speculative=slot.speculative,
    )
