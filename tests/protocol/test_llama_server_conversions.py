"""llama-server's native dialect as plain functions: its request bodies to GenerationRequests (prompts,
sampling, the samplers hychat has and has not), its /infill checks, the answers read from the chat
path's deltas, and its error bodies. Through a real server: tests/routes/test_llama_server_api.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from app.chat.infill import FimTokens
from app.chat.output import ChatDelta
from app.errors import (
    AuthenticationError,
    InvalidParameterError,
    MaxTokensTooLargeError,
    ModelNotFoundError,
    NotSupportedError,
    PromptTooLongError,
    QueueFullError,
)
from app.protocol.llama_server import (
    CompletionRequest,
    Cutoff,
    InfillRequest,
    error_body,
    infill_problem,
    prompts,
    samplers,
    to_completion,
    to_infill,
    to_sampling_params,
)
from app.protocol.llama_server_answers import (
    AnswerMeta,
    CompletionReader,
    generation_settings,
    selected,
    short_line,
    timings,
)
from app.services.backend import Backend
from app.services.checks import checked
from app.types import GenerationRequest, SamplingParams, TokenLogprob, TopLogprob, Usage

LIMIT = 512
USAGE = Usage(
    prompt_tokens=9, completion_tokens=3, ttft_ms=40.0, decode_tokens_per_s=25.0, total_ms=120.0, cached_tokens=4
)


def request(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "长城是", **fields})


def params(defaults: dict[str, Any] | None = None, **fields: Any) -> SamplingParams:
    return to_sampling_params(request(**fields), LIMIT, defaults or {})


# -- prompts ------------------------------------------------------------------------------------


def test_the_shapes_of_a_prompt_as_llama_server_reads_them():
    assert prompts("长城") == ["长城"]
    assert prompts([12, 34]) == [(12, 34)]
    assert prompts([12, "长城", 34]) == [(12, "长城", 34)]  # a token id at the top: one mixed prompt
    assert prompts(["长城", "故宫"]) == ["长城", "故宫"]  # no id at the top: several prompts
    body = request(prompt=[[1, 2], "长城", {"prompt_string": "故宫"}, [3, "是"]])
    assert prompts(body.prompt) == [(1, 2), "长城", "故宫", (3, "是")]


def test_an_empty_prompt_list_and_media_are_refused():
    with pytest.raises(InvalidParameterError, match='"prompt" must not be empty'):
        prompts(request(prompt=[]).prompt)
    with pytest.raises(InvalidParameterError, match="does not support multimodal"):
        prompts(request(prompt={"prompt_string": "看图", "multimodal_data": ["iVBORw0KGgo="]}).prompt)
    with pytest.raises(InvalidParameterError, match="elements must be"):
        prompts(request(prompt=[1, [2, 3]]).prompt)


def test_the_check_keeps_ids_and_texts_and_refuses_anything_else():
    assert checked(GenerationRequest(prompt=[5, "长城"])).prompt == (5, "长城")
    for bad in ([], [-1], [True], [1.5], 7):
        with pytest.raises(InvalidParameterError):
            checked(GenerationRequest(prompt=bad))


class BosBackend(Backend):
    """Scripted on purpose: neither local model adds a BOS, so where one goes in a mixed prompt cannot
    be seen on them. A text's tokens are its characters' code points; the BOS is 0."""

    name, label, available = "scripted", "scripted", True

    def load_model(self, model_path: str, **kwargs: Any) -> None: ...
    def info(self) -> dict[str, Any]: return {}  # fmt: skip

    def vocabulary_size(self) -> int: return 70000  # fmt: skip

    def token_piece(self, token_id: int) -> bytes: return chr(token_id).encode() if token_id else b"<s>"  # fmt: skip

    def _fim_tokens(self, m: Any) -> FimTokens: return FimTokens()  # fmt: skip

    def _encode_chat(self, m: Any, text: str) -> list[int]: return self._encode_raw(m, text)  # fmt: skip

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return [0] * add_special + [ord(c) for c in text]

    def _encode_raw(self, m: Any, text: str) -> list[int]:
        return self.tokenize(text)


def test_a_bos_goes_before_a_first_text_only():
    backend, ids = BosBackend(), [ord("长"), ord("城")]
    assert backend._raw_prompt(None, "长城").ids == [0, *ids]
    assert backend._raw_prompt(None, ("长城", 26159)).ids == [0, *ids, 26159]
    assert backend._raw_prompt(None, (*ids, "是")).ids == [*ids, ord("是")]  # ids first: no BOS, none later
    assert backend._raw_prompt(None, (*ids, "是")).text == "长城是"
    with pytest.raises(InvalidParameterError, match="token id 70000 is outside the vocabulary") as raised:
        backend._raw_prompt(None, (70000,))
    assert raised.value.param == "prompt"


# -- sampling -----------------------------------------------------------------------------------


def test_unset_fields_take_the_server_defaults_and_n_predict_its_limit():
    assert params() == SamplingParams(max_new_tokens=LIMIT)
    served = params({"temperature": 0.2, "top_k": 5, "seed": 7, "max_new_tokens": 64})
    assert (served.temperature, served.top_k, served.seed, served.max_new_tokens) == (0.2, 5, 7, 64)
    assert params({"seed": 7}, seed=-1).seed is None and params(seed=RANDOM).seed is None and params(seed=3).seed == 3


RANDOM = 4294967295


@pytest.mark.parametrize(
    ("fields", "max_new_tokens"),
    [({"n_predict": -1}, LIMIT), ({"n_predict": 0}, 1), ({"n_predict": 9, "max_tokens": 3}, 9), ({"max_tokens": 3}, 3)],
)
def test_n_predict_and_its_other_names(fields, max_new_tokens):
    assert params(**fields).max_new_tokens == max_new_tokens


def test_n_predict_above_the_limit_is_refused_by_name():
    with pytest.raises(MaxTokensTooLargeError) as raised:
        params(max_completion_tokens=LIMIT + 1)
    assert raised.value.param == "max_completion_tokens"


def test_values_out_of_a_samplers_range_are_clamped_as_llama_server_does():
    p = params(temperature=-1, top_k=-5, top_p=2, min_p=-0.5)
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.0, 0, 1.0, 0.0)
    kept = params(top_p=0, temperature=0.8)  # top_p 0 keeps the most likely token: what top_k 1 keeps
    assert (kept.top_p, kept.top_k) == (1.0, 1)
    checked(GenerationRequest(kept, prompt="x"))  # and the backend's check takes it


def test_a_chain_without_a_sampler_leaves_it_out():
    p = params(samplers=["temperature"], temperature=0.5, top_k=10, top_p=0.5, min_p=0.2, repeat_penalty=1.3)
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty) == (0.5, 0, 1.0, 0.0, 1.0)
    # llama.vim's cache-warming request: no sampler at all, the distribution as it is.
    bare = params(samplers=[], temperature=0.0, n_predict=0)
    assert (bare.temperature, bare.top_k, bare.top_p, bare.min_p, bare.max_new_tokens) == (1.0, 0, 1.0, 0.0, 1)
    assert params(samplers="kt", top_p=0.5).top_p == 1.0  # llama-server's letters: top_k, temperature
    assert params(repeat_last_n=0, repeat_penalty=1.5).repetition_penalty == 1.0  # a window of no token
    assert samplers(["Top-K", "nucleus", "temp", "no-such"]) == ["top_k", "top_p", "temperature"]


def test_hychat_applies_its_samplers_in_its_own_order_only():
    order = ["temperature", "top_k", "top_p", "min_p"]
    with pytest.raises(InvalidParameterError, match="in this order") as raised:
        params(samplers=order, temperature=0.7)
    assert raised.value.param == "samplers"
    assert params(samplers=order, temperature=0).temperature == 0  # greedy: the order changes nothing
    assert params(samplers=order, temperature=1.0).top_k == 40  # temperature 1 does not act
    with pytest.raises(InvalidParameterError, match="in this order"):
        params(samplers=["top_p", "top_p"], top_p=0.5)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"dry_multiplier": 0.8}, "dry"),
        ({"mirostat": 2}, "mirostat"),
        ({"typical_p": 0.9}, "typical_p"),
        ({"xtc_probability": 0.5}, "xtc_probability"),
        ({"top_n_sigma": 1.0}, "top_n_sigma"),
        ({"dynatemp_range": 0.5}, "dynatemp_range"),
        ({"samplers": ["top_k", "adaptive_p"], "adaptive_target": 0.3}, "adaptive_target"),
        ({"grammar_lazy": True}, "grammar_lazy"),
        ({"min_keep": 5}, "min_keep"),
    ],
)
def test_what_would_change_the_answer_and_cannot_be_done_is_refused_by_name(fields, name):
    with pytest.raises(InvalidParameterError) as raised:
        params(**fields)
    assert raised.value.param == name


def test_lora_names_the_models_adapters_for_this_request_and_an_empty_list_leaves_its_own():
    assert params(lora=[{"id": 1, "scale": 0.5}, {"id": 0, "scale": 0}]).lora == ((1, 0.5), (0, 0.0))
    assert params(lora=[]).lora is None and params().lora is None  # llama-server's: the server's scales


def test_llama_vims_fim_chain_takes_the_infill_sampler():
    chain = params(samplers=["top_k", "top_p", "infill"], top_k=40, top_p=0.9)
    assert chain.infill and (chain.top_k, chain.top_p, chain.min_p, chain.temperature) == (40, 0.9, 0.0, 1.0)
    assert not params().infill


def test_the_off_values_of_samplers_hychat_lacks_are_accepted():
    """What SillyTavern sends for llama.cpp with those samplers off."""
    off = {
        **{"dry_multiplier": 0, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 64},
        **{"mirostat": 0, "mirostat_tau": 5, "mirostat_eta": 0.1, "typical_p": 1, "top_n_sigma": -1},
        **{"xtc_probability": 0, "xtc_threshold": 0.1, "dynatemp_range": 0, "dynatemp_exponent": 1},
        **{"min_keep": 0, "repeat_last_n": 64},
        "samplers": ["dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"],
    }
    assert params(**off) == params(repeat_penalty=1.0)  # SillyTavern's chain leaves the penalties out
    assert params(xtc_probability=0.5, xtc_threshold=0.6).top_k == 40  # a threshold above 0.5 turns XTC off
    assert params(samplers=["top_k"], dry_multiplier=0.8).top_k == 40  # DRY not in the chain


def test_stop_grammar_probabilities_and_bias():
    p = params(stop=["。", ""], n_probs=3, logit_bias=[["长城", False], [5, 2.0]], ignore_eos=True)
    assert p.stop == ("。",) and p.logprobs == 3 and p.ignore_eos and not p.post_sampling_probs
    assert params(n_probs=3, post_sampling_probs=True).post_sampling_probs
    assert not params(post_sampling_probs=True).post_sampling_probs  # no n_probs: no probabilities at all
    assert p.logit_bias == (("长城", -math.inf), (5, 2.0))
    assert params(stop="\n").stop == ("\n",) and params(logprobs=2).logprobs == 2 and params(n_probs=0).logprobs is None
    assert params(grammar='root ::= "长城"').grammar == 'root ::= "长城"'
    assert "root" in params(json_schema={"type": "integer"}).grammar
    both = params(grammar='root ::= "长城"', json_schema={"type": "integer"})
    assert both.grammar == 'root ::= "长城"'  # llama-server's code: the grammar wins


def test_ignored_fields_are_dropped_and_unknown_ones_refused():
    vim = request(id_slot=0, t_max_prompt_ms=500, verbose=True, samplers=["top_k", "top_p"])
    kept = vim.model_dump(exclude_none=True, exclude_defaults=True)
    assert kept == {"prompt": "长城是", "samplers": ["top_k", "top_p"]}
    with pytest.raises(ValidationError, match="Extra inputs"):
        request(no_such_field=1)


def test_progress_and_timings_per_token_are_asked_of_streams_only():
    asked = to_completion(
        request(prompt=["长城", "故宫"], stream=True, return_progress=True, timings_per_token=True), LIMIT, {}
    )
    assert all(r.params.return_progress for r in asked.requests) and asked.timings_per_token
    whole = to_completion(request(return_progress=True), LIMIT, {})
    assert not whole.requests[0].params.return_progress and not whole.timings_per_token


def test_a_completion_asks_for_n_answers_of_each_prompt_and_its_cutoffs():
    asked = to_completion(request(prompt=["长城", [1, 2]], n_cmpl=2, n_indent=4, t_max_predict_ms=-1), LIMIT, {})
    assert [r.prompt for r in asked.requests] == ["长城", (1, 2)] and asked.n == 2
    assert asked.cutoff == Cutoff(n_indent=4, t_max_predict_ms=0) and asked.response_fields is None
    assert to_completion(request(n=3, response_fields=["content"]), LIMIT, {}).n == 3
    assert to_completion(request(response_fields=[]), LIMIT, {}).response_fields is None  # [] filters nothing


# -- /infill ------------------------------------------------------------------------------------

INFILL = {"input_prefix": "def 长城(x):\n    ", "input_suffix": "\n    return y\n"}


def test_an_infill_names_its_parts():
    body = InfillRequest.model_validate(
        {**INFILL, "prompt": "y = ", "input_extra": [{"text": "a = 1\n", "time": 3}, {"filename": "b.py", "text": ""}]}
    )
    infill = to_infill(body, LIMIT, {}).requests[0].infill
    assert (infill.prefix, infill.suffix, infill.prompt) == (INFILL["input_prefix"], INFILL["input_suffix"], "y = ")
    assert infill.extra == (("tmp", "a = 1\n"), ("b.py", ""))  # llama-server's default file name


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**INFILL, "prompt": 5}, '"prompt" must be a string'),
        ({"input_suffix": ""}, '"input_prefix" is required'),
        ({"input_prefix": ""}, '"input_suffix" is required'),
        ({**INFILL, "input_extra": {}}, '"input_extra" must be an array of {"filename": string, "text": string}'),
        # llama-server's own tests (test_infill.py::test_invalid_input_extra_req)
        ({**INFILL, "input_extra": [{}]}, 'extra_context chunk must contain a "text" field with a string value'),
        ({**INFILL, "input_extra": [{"filename": "ok"}]}, 'must contain a "text" field'),
        ({**INFILL, "input_extra": [{"filename": 123}]}, 'must contain a "text" field'),
        ({**INFILL, "input_extra": [{"filename": 123, "text": "abc"}]}, 'chunk\'s "filename" field must be a string'),
        ({**INFILL, "input_extra": [{"filename": 123, "text": 456}]}, 'must contain a "text" field'),
        ({**INFILL, "input_extra": [{"filename": "a.py", "text": "abc"}]}, None),
    ],
)
def test_infill_bodies_are_checked_in_llama_servers_words(body, problem):
    found = infill_problem(body)
    assert (found is None) if problem is None else (problem in found)


# -- answers ------------------------------------------------------------------------------------


def meta(stream: bool = False, **fields: Any) -> AnswerMeta:
    p = SamplingParams(max_new_tokens=8, **fields)
    return AnswerMeta("m.gguf", "长城是", 9, p, stream, None)


def read(reader: CompletionReader, deltas: list[ChatDelta]) -> list:
    chunks = []
    for delta in deltas:
        chunks += reader.feed(delta)
        if reader.done:
            break
    return chunks


def tokens(*texts: str) -> list[ChatDelta]:
    """One delta per sampled token, as the chat path gives them (token ids made up)."""
    return [ChatDelta(content=text, tokens=(i,)) for i, text in enumerate(texts)]


@pytest.mark.parametrize(
    ("last", "stop_type", "word", "truncated"),
    [
        (ChatDelta(finish_reason="stop", usage=USAGE, stop_sequence="。"), "word", "。", False),
        (ChatDelta(finish_reason="stop", usage=USAGE), "eos", "", False),
        (ChatDelta(finish_reason="length", usage=USAGE), "limit", "", True),  # 3 of 8 tokens: the context ended it
    ],
)
def test_why_an_answer_stopped(last, stop_type, word, truncated):
    reader = CompletionReader(0, meta(), Cutoff())
    read(reader, [*tokens("长", "城"), last])
    body = reader.final()
    assert (body["stop_type"], body["stopping_word"], body["truncated"]) == (stop_type, word, truncated)
    assert body["content"] == "长城" and body["stop"] is True and body["tokens_predicted"] == 3


def test_streamed_chunks_add_up_to_the_answer_and_the_last_event_sums_up():
    deltas = [*tokens("长", "", "城\n"), ChatDelta(content="是", finish_reason="length", usage=USAGE)]
    whole = CompletionReader(0, meta(), Cutoff())
    read(whole, deltas)
    streamed = CompletionReader(1, meta(stream=True), Cutoff())
    chunks = read(streamed, deltas)
    assert "".join(c.content for c in chunks) == whole.final()["content"] == "长城\n是"
    assert [c.tokens_predicted for c in chunks] == [1, 2, 3, 3] and all(c.index == 1 and not c.stop for c in chunks)
    last = streamed.final()
    assert last["content"] == "" and last["stop"] and last["has_new_line"] and last["tokens_evaluated"] == 9
    assert last["timings"] == timings(USAGE).model_dump()


def test_timings_as_llama_server_counts_them():
    t = timings(USAGE)
    assert (t.cache_n, t.prompt_n, t.prompt_ms, t.predicted_n, t.predicted_ms) == (4, 5, 40.0, 3, 80.0)
    assert t.predicted_per_token_ms == 40.0 and t.predicted_per_second == 25.0  # 2 decode steps after the first
    assert t.prompt_per_second == 125.0


TOP = (TopLogprob("长", "长".encode(), -0.1, 7), TopLogprob("短", "短".encode(), -2.5, 9))
PROBABLE = ChatDelta(content="长", logprob=TokenLogprob("长", "长".encode(), -0.1, 7, top=TOP))


def test_probabilities_with_n_probs():
    reader = CompletionReader(0, meta(stream=True, logprobs=2), Cutoff())
    chunk = read(reader, [PROBABLE, ChatDelta(finish_reason="stop", usage=USAGE)])[0]
    entry = chunk.completion_probabilities[0]
    assert (
        (entry.id, entry.token) == (7, "长")
        and entry.bytes == list("长".encode())
        and [(t.id, t.token) for t in entry.top_logprobs] == [(7, "长"), (9, "短")]
    )
    whole = CompletionReader(0, meta(logprobs=2), Cutoff())
    read(whole, [PROBABLE, ChatDelta(finish_reason="stop", usage=USAGE)])
    assert whole.final()["completion_probabilities"][0]["logprob"] == -0.1


def test_post_sampling_probabilities_are_probabilities_in_llama_servers_names():
    whole = CompletionReader(0, meta(logprobs=2, post_sampling_probs=True), Cutoff())
    read(whole, [PROBABLE, ChatDelta(finish_reason="stop", usage=USAGE)])
    entry = whole.final()["completion_probabilities"][0]
    assert set(entry) == {"id", "token", "bytes", "prob", "top_probs"} and entry["prob"] == pytest.approx(0.9048, 1e-3)
    assert [(t["id"], round(t["prob"], 4)) for t in entry["top_probs"]] == [(7, 0.9048), (9, 0.0821)]
    assert set(entry["top_probs"][0]) == {"id", "token", "bytes", "prob"}
    streamed = CompletionReader(0, meta(stream=True, logprobs=2, post_sampling_probs=True), Cutoff())
    chunk = read(streamed, [PROBABLE])[0].model_dump(exclude_none=True)
    assert chunk["completion_probabilities"][0] == entry


def test_generation_settings_show_the_biases_as_sampled_a_ban_as_null():
    settings = generation_settings(SamplingParams(logit_bias=((5, 2.0), (0, -math.inf)), ignore_eos=True), False)
    assert settings.model_dump()["logit_bias"] == [{"bias": 2.0, "token": 5}, {"bias": None, "token": 0}]
    reader = CompletionReader(0, meta(logit_bias=((2, -math.inf),), ignore_eos=True), Cutoff())
    read(reader, [*tokens("长"), ChatDelta(finish_reason="length", usage=USAGE)])
    assert reader.final()["generation_settings"]["logit_bias"] == [{"bias": None, "token": 2}]  # null kept
    assert generation_settings(SamplingParams(), True).logit_bias == []


def test_n_indent_ends_the_answer_at_a_line_indented_less():
    text = "x = 1\n    y = 2\n  z"
    assert short_line(text, 4, 0) == (len("x = 1\n    y = 2\n  "), len("x = 1\n    y = 2"))
    assert short_line("a\n    ", 4, 0) == (None, 1)  # nothing after the indentation yet: judged later
    reader = CompletionReader(0, meta(stream=True), Cutoff(n_indent=4))
    chunks = read(reader, [*tokens("b = 1", "\n    c", "\n", "d = 3", "\n"), ChatDelta(finish_reason="stop")])
    assert "".join(c.content for c in chunks) == "b = 1\n    c\n" and reader.cut and reader.stop_type == "limit"
    assert reader.final()["tokens_predicted"] == 4


def test_t_max_predict_ms_ends_the_answer_at_the_next_new_line_once_late():
    now = [0.0]
    reader = CompletionReader(0, meta(), Cutoff(t_max_predict_ms=100), clock=lambda: now[0])
    read(reader, tokens("a"))
    now[0] = 0.5  # 500 ms after the first token
    read(reader, tokens("b", "c\nd", "e"))
    assert reader.cut and reader.final()["content"] == "abc\nd"


def test_response_fields_select_and_unnest():
    body = {"content": "长城", "timings": {"prompt_n": 3}, "generation_settings": {"n_predict": 8}}
    picked = selected(body, ["content", "timings/prompt_n", "generation_settings/no", "missing"])
    assert picked == {"content": "长城", "timings/prompt_n": 3}


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidParameterError("bad"), 400, "invalid_request_error"),
        (AuthenticationError("no key"), 401, "authentication_error"),
        (ModelNotFoundError("no such model"), 404, "not_found_error"),
        (QueueFullError("busy"), 429, "unavailable_error"),
        (NotSupportedError("off"), 501, "not_supported_error"),
        (RuntimeError("secret details"), 500, "server_error"),
    ],
)
def test_errors_in_llama_servers_shape(error, status, kind):
    body = error_body(error)
    assert body == {"error": {"code": status, "message": body["error"]["message"], "type": kind}}
    assert "secret" not in body["error"]["message"]


def test_a_prompt_over_the_context_says_by_how_much():
    body = error_body(PromptTooLongError(3000, 2048, "prompt"))["error"]
    assert body["type"] == "exceed_context_size_error" and body["code"] == 400
    assert (body["n_prompt_tokens"], body["n_ctx"]) == (3000, 2048)
