"""Does reading a chat answer (reasoning apart from the answer, tool calls) slow its stream?

The same greedy generation runs with the product's output parsing and without it, the two arms
alternated in one process so that both meet the same machine. Both arms turn every token into the
`/v1` chunks a client receives (serialized); only the parsing differs. The rate is counted where
the chunks come out, after the parsing, so any cost it has shows: on 2 cores a busy reader thread
would also slow the engine's decode.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from time import perf_counter
from typing import Any

from app.chat.output import ChatOutputParser
from app.protocol.openai_answers import ChatChunks, response_meta
from app.services.backend import Backend
from app.services.chat import ChatStream
from app.types import ChatOptions, GenerationRequest, SamplingParams

# Hunyuan-7B's output shape, forced so that both arms decode the same tokens and the parser meets
# the tags it exists for: reasoning, then the answer.
GRAMMAR = r'root ::= "<think>\n" [a-z ,.]{300} "\n</think>\n<answer>\n" [a-z ,.]{150} "\n</answer>"'
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
MESSAGES = [{"role": "user", "content": "Think about the weather in Beijing, then answer in English."}]


@dataclass
class ParsingReport:
    rounds: int
    tokens: int  # per generation, the same in both arms
    rates_off: list[float]  # tokens/s per round, without parsing
    rates_on: list[float]

    @property
    def ratio(self) -> float:
        """Median rate with parsing over median rate without."""
        return statistics.median(self.rates_on) / statistics.median(self.rates_off)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def measure(backend: Backend, rounds: int, on_run: Callable[[], None] = lambda: None) -> ParsingReport:
    """`rounds` pairs of runs after a warm-up; the arm that goes first alternates."""
    _run(backend, parse=True)  # warm-up: the template, the grammar, the cache
    rates: dict[bool, list[float]] = {False: [], True: []}
    tokens = set()
    for i in range(rounds):
        for parse in (False, True) if i % 2 == 0 else (True, False):
            n, rate = _run(backend, parse)
            tokens.add(n)
            rates[parse].append(rate)
            on_run()
    if len(tokens) != 1:
        raise RuntimeError(f"the arms decoded different token counts {sorted(tokens)}: not the same generation")
    return ParsingReport(rounds, tokens.pop(), rates[False], rates[True])


def _run(backend: Backend, parse: bool) -> tuple[int, float]:
    options = ChatOptions(tools=(TOOL,))
    params = SamplingParams(max_new_tokens=1024, temperature=0, grammar=GRAMMAR)
    generation = backend.start(GenerationRequest(params, messages=MESSAGES, chat=options))
    # The same prompt in both arms; without parsing, the parser only passes the text through.
    parser = (
        ChatOutputParser(generation.prompt, options)
        if parse
        else ChatOutputParser(replace(generation.prompt, tool_names=()), ChatOptions(reasoning_format="none"))
    )
    chunks = ChatChunks(response_meta("chatcmpl", "bench"))
    times = []
    for delta in ChatStream(generation, parser):  # what the chat path does for every dialect
        for chunk in chunks.chunks(delta):
            chunk.model_dump_json()  # what the route sends
        times.append(perf_counter())
    return len(times), (len(times) - 1) / (times[-1] - times[0])
