"""The one chat path. A route converts its dialect's request to a `GenerationRequest`, asks the registry
for the model's backend (`Registry.resolve`, which loads it if needed), calls `start_chat` once, and
converts what comes back: a stream of `ChatDelta`s (reasoning, answer, tool calls; the finish reason
and usage last), or the whole `Answer`. The output parser is built and fed
here, for every dialect alike; a raw prompt's text passes through as content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import replace

from app.chat.output import Answer, ChatDelta, ChatOutputParser, joined
from app.services.backend import Backend, Generation
from app.types import GenerationRequest, TokenEvent


def start_chat(backend: Backend, request: GenerationRequest) -> ChatStream:
    """Starts `request` on `backend` (the one `Registry.resolve` gives for the request's model).
    Checks and tokenizes now: a bad request raises here, before any response starts."""
    generation = backend.start(request)
    parser = ChatOutputParser(generation.prompt, request.chat) if request.messages is not None else None
    return ChatStream(generation, parser)


def start_choices(backend: Backend, request: GenerationRequest, n: int) -> list[ChatStream]:
    """`n` answers to the same request (OpenAI's `n`), sampled independently and decoded together; with
    a seed, choice i samples with seed + i. If one cannot start, those started are cancelled."""
    streams: list[ChatStream] = []
    try:
        for i in range(n):
            seed = request.params.seed
            params = request.params if seed is None else replace(request.params, seed=(seed + i) % 2**32)
            streams.append(start_chat(backend, replace(request, params=params)))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams


class ChatStream:
    """A started generation read through its output parser (None: a raw prompt). Iterate it from a
    thread or `async for` it; leaving the loop cancels the generation."""

    def __init__(self, generation: Generation, parser: ChatOutputParser | None):
        self._generation, self._parser = generation, parser
        self.backend_name = generation.backend_name
        self.model_name = generation.model_name
        self.prompt_tokens = len(generation.prompt.ids)
        self.prompt_text = generation.prompt.text  # what the model was given (a rendered chat, a laid-out infill)
        self.params = generation.params  # the sampling it gets (logit_bias in token ids)
        self.dropped_messages = generation.prompt.dropped_messages  # left out so that the prompt fits

    def __iter__(self) -> Iterator[ChatDelta]:
        for event in self._generation:
            yield self._delta(event)

    async def __aiter__(self) -> AsyncIterator[ChatDelta]:
        """Each token's delta, except that the tokens arriving together (a speculative step's) come as
        one delta: every delta costs a frame on the wire, which on a CPU this size takes time from decoding."""
        async with aclosing(self._generation.batches()) as batches:
            async for batch in batches:
                for delta in joined([self._delta(event) for event in batch]):
                    yield delta

    async def each_token(self) -> AsyncIterator[ChatDelta]:
        """A delta for every token, however they arrived."""
        async for event in self._generation:
            yield self._delta(event)

    async def answer(self) -> Answer:
        return Answer.of([delta async for delta in self])

    def cancel(self) -> None:
        """Stops a generation that will not be read."""
        self._generation.cancel()

    def _delta(self, event: TokenEvent) -> ChatDelta:
        if event.progress is not None:  # no text for the parser
            return ChatDelta(progress=event.progress)
        parser = self._parser
        delta = parser.feed(event.text) if parser else ChatDelta(content=event.text)
        last = {"finish_reason": event.finish_reason, "usage": event.usage, "stop_sequence": event.stop_sequence}
        if event.finish_reason is None or parser is None:
            tokens = () if event.token_id is None else (event.token_id,)
            return replace(delta, logprob=event.logprob, tokens=tokens, **last)
        delta = delta + parser.finish()  # raises ToolCallMissingError where tool_choice demanded a call
        if parser.tool_calls:
            last["finish_reason"] = "tool_calls"
        return replace(delta, logprob=event.logprob, reasoning_tokens=parser.reasoning_tokens, **last)
