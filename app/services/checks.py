"""The one check of a generation request, done by the backend that starts it.

A dialect's wire types state the same ranges in its schema (clients see them, and a bad field is a
400 that names it); this is what holds for every caller, the Python API included.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, get_args

from app.chat.format import RESERVED_TEMPLATE_VARIABLES, tool_name
from app.errors import InvalidParameterError, PromptTooLongError
from app.types import (
    MAX_EMBEDDING_INPUTS,
    MAX_LOGPROBS,
    MAX_STOP_SEQUENCES,
    ROLES,
    ChatOptions,
    GenerationRequest,
    Infill,
    SamplingParams,
    SpecType,
    Speculation,
)
from config.settings import MAX_DRAFT_TOKENS, MAX_NGRAM_SIZE


def checked(request: GenerationRequest) -> GenerationRequest:
    """`request` with its values checked (InvalidParameterError names the first one at fault) and
    normalised: `stop` a tuple, each message only the keys a template reads."""
    given = [request.prompt, request.messages, request.infill]
    _check(sum(x is not None for x in given) == 1, "give exactly one of prompt, messages or infill")
    prompt = None if request.prompt is None else _checked_prompt(request.prompt)
    if request.infill is not None:
        _check_infill(request.infill)
    _check_chat(request.chat)
    messages = None if request.messages is None else _checked_messages(request.messages)
    if messages is not None:
        _check_continuation(messages, request.chat)
    return replace(request, params=_checked_params(request.params), prompt=prompt, messages=messages)


def _checked_prompt(prompt: Any) -> str | tuple[int | str, ...]:
    """A text, or a non-empty sequence of token ids and texts (as a tuple); whether each id is in the
    vocabulary is the backend's to say."""
    if isinstance(prompt, str):
        return prompt
    _check(
        isinstance(prompt, (list, tuple)) and len(prompt) > 0,
        "prompt must be a string, or a non-empty list of token ids and strings",
    )
    _check(
        all(isinstance(piece, str) or is_int_at_least(piece, 0) for piece in prompt),
        "prompt: each item must be a token id (an integer >= 0) or a string",
    )
    return tuple(prompt)


def _check_infill(infill: Infill) -> None:
    texts = [infill.prefix, infill.suffix, infill.prompt, *(part for file in infill.extra for part in file)]
    _check(all(isinstance(text, str) for text in texts), "infill: prefix, suffix, prompt and files must be strings")


def sampling_params(**kwargs: Any) -> SamplingParams:
    """The Python API's keyword arguments (`generate(prompt, temperature=...)`) as parameters; their
    values are checked with the rest of the request, by `checked`."""
    unknown = sorted(set(kwargs) - set(SamplingParams.__dataclass_fields__))
    _check(not unknown, f"unknown generation parameter(s): {', '.join(unknown)}")
    return SamplingParams(**kwargs)


def _checked_params(p: SamplingParams) -> SamplingParams:
    _check(is_int_at_least(p.max_new_tokens, 1), "max_new_tokens must be an integer >= 1")
    _check(_is_number(p.temperature) and p.temperature >= 0, "temperature must be a finite number >= 0")
    _check(_is_number(p.top_p) and 0 < p.top_p <= 1, "top_p must be in (0, 1]")
    _check(is_int_at_least(p.top_k, 0), "top_k must be an integer >= 0 (0 disables it)")
    _check(_is_number(p.min_p) and 0 <= p.min_p <= 1, "min_p must be in [0, 1]")
    _check(
        _is_number(p.repetition_penalty) and p.repetition_penalty > 0, "repetition_penalty must be a finite number > 0"
    )
    _check(p.seed is None or (is_int_at_least(p.seed, 0) and p.seed < 2**32), "seed must be in [0, 2**32)")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name)
        _check(_is_number(value) and -2 <= value <= 2, f"{name} must be a number in [-2, 2]")
    _check(p.grammar is None or (isinstance(p.grammar, str) and p.grammar.strip()), "grammar is empty")
    _check(
        p.logprobs is None or (is_int_at_least(p.logprobs, 0) and p.logprobs <= MAX_LOGPROBS),
        f"logprobs must be an integer in [0, {MAX_LOGPROBS}]",
    )
    _check(isinstance(p.ignore_eos, bool), "ignore_eos must be true or false")
    _check(isinstance(p.post_sampling_probs, bool), "post_sampling_probs must be true or false")
    _check(isinstance(p.infill, bool), "infill must be true or false")
    _check_logit_bias(p.logit_bias)
    lora = None if p.lora is None else tuple(tuple(pair) for pair in p.lora)
    _check(
        lora is None or all(len(pair) == 2 and is_int_at_least(pair[0], 0) and _is_number(pair[1]) for pair in lora),
        "lora: each entry is an adapter id (an integer >= 0) and a finite scale",
    )
    if p.speculative is not None:
        _check_speculation(p.speculative)
    stop = (p.stop,) if isinstance(p.stop, str) else tuple(p.stop or ())
    _check(
        len(stop) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) and s for s in stop),
        f"stop must be at most {MAX_STOP_SEQUENCES} non-empty strings",
    )
    logit_bias = tuple((key, float(bias)) for key, bias in p.logit_bias)
    return replace(p, stop=stop, logit_bias=logit_bias, lora=lora)


def _check_speculation(s: Any) -> None:
    """A request's speculative decoding, each value named as llama-server's request field."""
    if not isinstance(s, Speculation):
        raise InvalidParameterError("speculative must be a Speculation", "speculative")
    types = get_args(SpecType)
    ranges = {
        "n_max": (
            is_int_at_least(s.n_max, 0) and s.n_max <= MAX_DRAFT_TOKENS,
            f"an integer in [0, {MAX_DRAFT_TOKENS}]",
        ),
        "n_min": (is_int_at_least(s.n_min, 0), "an integer >= 0"),
        "ngram_size_n": (
            is_int_at_least(s.ngram_size_n, 1) and s.ngram_size_n <= MAX_NGRAM_SIZE,
            f"an integer in [1, {MAX_NGRAM_SIZE}]",
        ),
        "ngram_min_hits": (is_int_at_least(s.ngram_min_hits, 1), "an integer >= 1"),
        "p_min": (_is_number(s.p_min) and 0 <= s.p_min <= 1, "a number in [0, 1]"),
        "type": (s.type in types, "one of " + ", ".join(types)),
    }
    for name, (ok, what) in ranges.items():
        if not ok:
            raise InvalidParameterError(f"speculative.{name} must be {what}", f"speculative.{name}")


def _check_logit_bias(logit_bias: Any) -> None:
    _check(isinstance(logit_bias, tuple | list), "logit_bias must be a list of (token, bias) pairs")
    for pair in logit_bias:
        key, bias = pair if isinstance(pair, tuple | list) and len(pair) == 2 else (None, None)
        _check(
            (is_int_at_least(key, 0) or (isinstance(key, str) and key != ""))
            and (_is_number(bias) and -100 <= bias <= 100 or bias == -math.inf),
            "logit_bias: each entry is a token id or text and a bias in [-100, 100] (-inf bans it)",
        )


def _checked_messages(messages: Any) -> list[dict[str, Any]]:
    """Role and text of each message, plus what tool calling adds: an assistant's `tool_calls`
    (OpenAI's shape, content may then be empty), a tool result's `tool_call_id` and `name`; and an
    answer's `reasoning_content`. No messages: the template renders the generation prompt alone, as
    llama-server and vLLM do."""
    _check(isinstance(messages, (list, tuple)), "messages must be a list")
    return [_checked_message(i, message) for i, message in enumerate(messages)]


def check_prompt_fits(n_prompt: int, n_ctx: int, param: str = "prompt") -> None:
    if n_prompt == 0:
        raise InvalidParameterError("prompt is empty", param)
    if n_prompt >= n_ctx:
        raise PromptTooLongError(n_prompt, n_ctx, param)


def check_embedding_inputs(inputs: Any) -> None:
    _check(isinstance(inputs, (list, tuple)) and 0 < len(inputs) <= MAX_EMBEDDING_INPUTS,
           f"input must hold 1 to {MAX_EMBEDDING_INPUTS} texts or token lists")  # fmt: skip
    for i, item in enumerate(inputs):
        text = isinstance(item, str) and item != ""
        tokens = isinstance(item, (list, tuple)) and len(item) > 0 and all(is_int_at_least(t, 0) for t in item)
        _check(text or tokens, f"input[{i}] must be a non-empty text or a non-empty list of token ids")


def is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_chat(options: ChatOptions) -> None:
    names = [tool_name(t) for t in options.tools]
    if len(set(names)) != len(names):
        raise InvalidParameterError("tools have duplicate function names", "tools")
    if options.tool_choice not in ("auto", "none", "required") and options.tool_choice not in names:
        raise InvalidParameterError(f"tool_choice names an unknown function: {options.tool_choice!r}", "tool_choice")
    if options.tool_choice == "required" and not names:
        raise InvalidParameterError("tool_choice 'required' needs tools", "tool_choice")
    if reserved := sorted(RESERVED_TEMPLATE_VARIABLES & set(options.template_kwargs)):
        raise InvalidParameterError(f"chat_template_kwargs cannot set {', '.join(reserved)}", "chat_template_kwargs")


def _check_continuation(messages: list[dict[str, Any]], options: ChatOptions) -> None:
    if options.continue_final_message and options.add_generation_prompt:
        raise InvalidParameterError(
            "give either add_generation_prompt or continue_final_message, not both", "continue_final_message"
        )
    if options.continue_final_message is None and options.continues(messages):
        # llama-server's rule: the automatic prefill continues one message, not a run of them
        two = len(messages) >= 2 and messages[-2].get("role") == "assistant"
        _check(not two, "cannot have 2 or more assistant messages at the end of the list")
    if not options.continue_final_message:
        return  # the automatic prefill only continues a message it can
    last = messages[-1] if messages else {}
    _check(last.get("role") == "assistant", "continue_final_message needs a last message from the assistant")
    _check(not last.get("tool_calls"), "an assistant message with tool calls cannot be continued")
    _check(bool(last.get("content")), "the assistant message to continue is empty")


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
    for key in ("tool_call_id", "name", "reasoning_content"):  # reasoning: an earlier answer's, for the template
        if message.get(key) is not None:
            _check(isinstance(message[key], str), f"messages[{i}].{key} must be a string")
            checked[key] = message[key]
    return checked


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidParameterError(message)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)
