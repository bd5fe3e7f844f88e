"""Speculative decoding around the engine: llama-server's `speculative.*` request fields on every
dialect's body (conversions to `Speculation`, the check every backend makes, a bad value a 400 in the caller's
dialect), and the drafts an answer reports (OpenAI's prediction tokens, llama-server's timings). The
400s come from an app without a model: the body is refused before any backend is asked. The engine's
own drafting: tests/engine. The settings and flags: tests/config/test_settings.py,
tests/services/test_registry.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.chat.output import ChatDelta
from app.errors import InvalidParameterError
from app.main import create_app
from app.protocol import anthropic, llama_server, ollama, openai, responses, simple
from app.protocol.llama_server_answers import AnswerMeta, CompletionReader
from app.protocol.openai_answers import timings, total_usage, usage_body
from app.services.checks import checked
from app.types import GenerationRequest, SamplingParams, Speculation, Usage
from config.settings import Settings

USER = [{"role": "user", "content": "长城有多长？"}]
SERVER = Speculation(type="ngram", n_max=8, n_min=2, ngram_size_n=4, ngram_min_hits=1)  # the server's default
DEFAULTS = {"temperature": 0.3, "speculative": SERVER}
USAGE = Usage(prompt_tokens=9, completion_tokens=30, ttft_ms=40.0, decode_tokens_per_s=25.0, total_ms=120.0)
DRAFTED = replace(USAGE, drafted_tokens=20, accepted_tokens=15, drafts=4)
OLLAMA_CHAT = {"think": None, "reasoning_format": "auto", "truncate": False}  # the server's defaults, as a route gives


def completion(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    """llama-server's /completion body's speculative decoding."""
    body = llama_server.CompletionRequest.model_validate({"prompt": "长城", **fields})
    return llama_server.to_sampling_params(body, 512, defaults).speculative


def chat(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = openai.ChatCompletionRequest.model_validate({"messages": USER, **fields})
    return openai.to_chat_generation_request(body, 512, defaults=defaults).params.speculative


def text_completion(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = openai.CompletionRequest.model_validate({"prompt": "长城", **fields})
    return openai.to_completion_generation_request(body, 512, defaults).params.speculative


def ollama_chat(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = ollama.OllamaChatRequest.model_validate({"messages": USER, **fields})
    return ollama.to_chat_generation_request(body, 512, **OLLAMA_CHAT, defaults=defaults).params.speculative


def ollama_generate(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = ollama.OllamaGenerateRequest.model_validate({"prompt": "长城", **fields})
    return ollama.to_generate_generation_request(body, 512, **OLLAMA_CHAT, defaults=defaults).params.speculative


def messages(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = anthropic.MessagesRequest.model_validate({"messages": USER, "max_tokens": 9, **fields})
    return anthropic.to_generation_request(body, 512, defaults=defaults).params.speculative


def response(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = responses.ResponseRequest.model_validate({"input": "长城", **fields})
    return responses.to_generation_request(body, [], 512, defaults=defaults).request.params.speculative


def api_chat(defaults: dict[str, Any], **fields: Any) -> Speculation | None:
    body = simple.ChatRequest.model_validate({"messages": USER, **fields})
    return simple.to_generation_request(body, 512, defaults=defaults).params.speculative


DIALECTS = [completion, chat, text_completion, ollama_chat, ollama_generate, messages, response, api_chat]
BODIES = {  # each wire type with its required fields
    llama_server.CompletionRequest: {"prompt": "长城"},
    openai.ChatCompletionRequest: {"messages": USER},
    openai.CompletionRequest: {"prompt": "长城"},
    ollama.OllamaChatRequest: {"messages": USER},
    ollama.OllamaGenerateRequest: {"prompt": "长城"},
    anthropic.MessagesRequest: {"messages": USER, "max_tokens": 9},
    responses.ResponseRequest: {"input": "长城"},
    simple.ChatRequest: {"messages": USER},
}


@pytest.mark.parametrize("convert", DIALECTS)
def test_a_request_that_sets_none_gets_the_servers(convert):
    assert convert(DEFAULTS) == SERVER
    assert convert(DEFAULTS, **{"speculative.n_max": None}) == SERVER  # null: unset, as llama-server reads it
    assert convert({}) is None  # no server default: the backend's own


@pytest.mark.parametrize("convert", DIALECTS)
def test_the_fields_a_request_sets_replace_the_servers(convert):
    given = {"speculative.n_max": 4, "speculative.ngram_min_hits": 2}
    assert convert(DEFAULTS, **given) == replace(SERVER, n_max=4, ngram_min_hits=2)
    assert convert({}, **given) == Speculation(n_max=4, ngram_min_hits=2)  # over Speculation()'s own
    every = {"speculative.type": "none", "speculative.n_max": 0, "speculative.n_min": 1,
             "speculative.ngram_size_n": 64, "speculative.ngram_min_hits": 3, "speculative.p_min": 0.75}  # fmt: skip
    assert convert(DEFAULTS, **every) == Speculation(
        type="none", n_max=0, n_min=1, ngram_size_n=64, ngram_min_hits=3, p_min=0.75
    )
    assert convert(DEFAULTS, **{"speculative.p_min": 1}) == replace(SERVER, p_min=1.0)
    assert convert(DEFAULTS, **{"speculative.p_min": None}) == SERVER  # null: unset


@pytest.mark.parametrize("convert", DIALECTS)
def test_draft_and_llama_servers_draft_simple_are_the_draft_models_drafting(convert):
    for name in ("draft", "draft-simple"):
        assert convert(DEFAULTS, **{"speculative.type": name}) == replace(SERVER, type="draft")
    given = {"speculative.type": "draft-simple", "speculative.p_min": 0.5}
    assert convert({}, **given) == Speculation(type="draft", p_min=0.5)


@pytest.mark.parametrize("name", ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache"])
def test_llama_servers_ngram_types_are_ngram(name):
    off = replace(SERVER, type="none")
    for convert in DIALECTS:
        assert convert({"speculative": off}, **{"speculative.type": name}) == SERVER


@pytest.mark.parametrize(
    "field, value",
    [
        ("speculative.n_max", 257),
        ("speculative.n_max", -1),
        ("speculative.n_min", -1),
        ("speculative.ngram_size_n", 0),
        ("speculative.ngram_size_n", 65),
        ("speculative.ngram_min_hits", 0),
        ("speculative.type", "draft-mtp"),  # llama-server's other draft types: not offered
        ("speculative.type", "draft-eagle3"),
        ("speculative.p_min", -0.1),
        ("speculative.p_min", 1.5),
        ("speculative.p_min", "nan"),
        ("speculative.p_min", "x"),
    ],
)
def test_values_out_of_range_are_refused_by_the_wire_types(field, value):
    for body, fields in BODIES.items():
        with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
            body.model_validate({**fields, field: value})


def test_the_field_names_are_llama_servers_not_python_ones():
    with pytest.raises(ValidationError, match="speculative_n_max"):
        llama_server.CompletionRequest.model_validate({"prompt": "x", "speculative_n_max": 4})
    with pytest.raises(ValidationError, match="speculative"):
        openai.ChatCompletionRequest.model_validate({"messages": USER, "speculative": {"n_max": 4}})


@pytest.mark.parametrize(
    "speculation, param",
    [
        (Speculation(n_max=257), "speculative.n_max"),
        (Speculation(n_min=-1), "speculative.n_min"),
        (Speculation(ngram_size_n=0), "speculative.ngram_size_n"),
        (Speculation(ngram_size_n=65), "speculative.ngram_size_n"),
        (Speculation(ngram_min_hits=0), "speculative.ngram_min_hits"),
        (Speculation(n_max=True), "speculative.n_max"),  # type: ignore[arg-type]
        (Speculation(type="ngram-mod"), "speculative.type"),  # type: ignore[arg-type]  # the wire's name only
        (Speculation(type="draft-simple"), "speculative.type"),  # type: ignore[arg-type]
        (Speculation(p_min=-0.1), "speculative.p_min"),
        (Speculation(p_min=1.01), "speculative.p_min"),
        (Speculation(p_min=float("nan")), "speculative.p_min"),
        (Speculation(p_min=float("inf")), "speculative.p_min"),
        (Speculation(p_min="0.5"), "speculative.p_min"),  # type: ignore[arg-type]
        (Speculation(p_min=True), "speculative.p_min"),  # type: ignore[arg-type]
    ],
)
def test_the_check_every_backend_makes_names_the_field(speculation, param):
    """What holds for every caller, the Python API included."""
    with pytest.raises(InvalidParameterError) as raised:
        checked(GenerationRequest(SamplingParams(speculative=speculation), prompt="长城"))
    assert raised.value.param == param and param in str(raised.value)
    fines = (None, Speculation(), Speculation(type="none", n_max=0), Speculation(n_max=256, ngram_size_n=64),
             Speculation(type="draft", p_min=1), Speculation(type="draft", p_min=0.0))  # fmt: skip
    for fine in fines:
        assert checked(GenerationRequest(SamplingParams(speculative=fine), prompt="长城")).params.speculative == fine


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(_env_file=None), backends={})) as client:  # refused before any model
        yield client


def test_a_bad_value_is_a_400_in_llama_servers_shape_on_completion(client):
    r = client.post("/completion", json={"prompt": "长城", "speculative.n_max": 300})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["type"]) == (400, "invalid_request_error")
    assert error["message"].startswith("speculative.n_max:") and "256" in error["message"]
    r = client.post("/completion", json={"prompt": "长城", "speculative.p_min": -1})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("speculative.p_min:"), r.text


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", {"messages": USER, "speculative.type": "draft-mtp"}, "speculative.type"),
        ("/v1/chat/completions", {"messages": USER, "speculative.ngram_size_n": 0}, "speculative.ngram_size_n"),
        ("/v1/completions", {"prompt": "长城", "speculative.ngram_min_hits": 0}, "speculative.ngram_min_hits"),
        ("/v1/chat/completions", {"messages": USER, "speculative.p_min": 2}, "speculative.p_min"),
    ],
)
def test_a_bad_value_is_a_400_in_openais_shape_on_v1(client, path, body, param):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_parameter")


# -- the drafts an answer reports ---------------------------------------------------------------


def test_openai_usage_shows_drafts_as_prediction_tokens_only_where_there_was_a_draft():
    plain = {"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39}
    plain |= {"prompt_tokens_details": {"cached_tokens": 0}}
    assert usage_body(USAGE).model_dump() == plain  # no draft: as before
    assert usage_body(USAGE, 3).model_dump() == plain | {"completion_tokens_details": {"reasoning_tokens": 3}}
    drafted = {"accepted_prediction_tokens": 15, "rejected_prediction_tokens": 5}  # 20 drafted, 15 of them kept
    assert usage_body(DRAFTED).model_dump() == plain | {"completion_tokens_details": drafted}
    details = usage_body(DRAFTED, 3).model_dump()["completion_tokens_details"]
    assert details == {"reasoning_tokens": 3, **drafted}
    # n choices: their drafts add up, as their tokens do
    two = total_usage([DRAFTED, replace(USAGE, drafted_tokens=4, accepted_tokens=4, drafts=1)], 0).model_dump()
    assert two["completion_tokens"] == 60
    assert two["completion_tokens_details"] == {
        "reasoning_tokens": 0, "accepted_prediction_tokens": 19, "rejected_prediction_tokens": 5
    }  # fmt: skip


def test_llama_server_timings_carry_draft_n_only_where_there_was_a_draft():
    assert "draft_n" not in timings(USAGE).model_dump() and "draft_n_accepted" not in timings(USAGE).model_dump()
    t = timings(DRAFTED).model_dump()
    assert (t["draft_n"], t["draft_n_accepted"], t["predicted_n"]) == (20, 15, 30)
    # /completion's answer (its last event when streamed) renders them in its timings
    meta = AnswerMeta("m.gguf", "长城", 9, SamplingParams(max_new_tokens=30), False, None)
    for usage, shown in ((DRAFTED, {"draft_n": 20, "draft_n_accepted": 15}), (USAGE, {})):
        reader = CompletionReader(0, meta, llama_server.Cutoff())
        reader.feed(ChatDelta(content="长城", finish_reason="length", usage=usage))
        body = reader.final()
        assert {k: v for k, v in body["timings"].items() if k.startswith("draft")} == shown


@pytest.mark.parametrize(
    "path, body, message_of",
    [
        ("/api/chat", {"model": "m", "messages": USER}, lambda e: e["error"]),  # Ollama's (a model named)
        ("/api/generate", {"model": "m", "prompt": "长城"}, lambda e: e["error"]),
        ("/api/chat", {"messages": USER}, lambda e: e["error"]["message"]),  # hychat's own (no model)
        ("/v1/messages", {"model": "m", "messages": USER, "max_tokens": 9}, lambda e: e["error"]["message"]),
        ("/v1/responses", {"model": "m", "input": "长城"}, lambda e: e["error"]["message"]),
    ],
)
def test_the_other_dialects_take_the_fields_and_refuse_a_bad_value_in_their_shape(client, path, body, message_of):
    r = client.post(path, json={**body, "speculative.n_max": 300})
    assert r.status_code == 400, r.text
    assert "speculative.n_max" in message_of(r.json()), r.text
