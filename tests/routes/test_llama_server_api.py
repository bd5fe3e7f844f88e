"""llama-server's native API (`/completion`, `/completions`, `/infill`, `/props`, `/slots`) through a
real server: llama.cpp on the embedded SmolLM2 GGUF with two slots, and for /infill a tiny random
HunYuan with Qwen2.5-Coder's FIM tokens (its GGUF made by the product's converter). Clients see what
llama-server's own tests assert; the answers are held against /v1/completions and Ollama's generate
with a suffix, the other paths to the same model. The conversions alone:
tests/protocol/test_llama_server_conversions.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest

KEY = "llama-server-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
COPY = "Copy the text.\nText: 长城很长。\nCopy: 长城很长。\nText: 我喜欢喝茶。\nCopy:"
COUNT = "1, 2, 3, 4,"
GREEDY = {"temperature": 0}
N_CTX, LIMIT = 2048, 2048


@pytest.fixture(scope="module")
def server(start_server):
    return start_server({"HYCHAT_API_KEY": KEY, "HYCHAT_PARALLEL": "2", "HYCHAT_MAX_TOKENS_LIMIT": str(LIMIT)})


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
        yield c


def complete(client: httpx.Client, path: str = "/completion", **body) -> dict | list:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def events(client: httpx.Client, path: str = "/completion", **body) -> list[dict]:
    """The `data:` of each Server-Sent Event, as llama-server's clients read them."""
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert "[DONE]" not in text
    return [json.loads(line[5:]) for line in re.split(r"\r\n|\r|\n", text) if line.startswith("data:")]


def tokenize(client: httpx.Client, text: str, add_special: bool) -> list[int]:
    return client.post("/tokenize", json={"content": text, "add_special": add_special}).json()["tokens"]


def error_of(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"] == kind and error["message"]
    return error


# -- /completion --------------------------------------------------------------------------------


def test_a_greedy_completion_equals_v1_completions_streamed_or_not(client):
    whole = complete(client, prompt=COPY, n_predict=8, **GREEDY)
    v1 = client.post("/v1/completions", json={"prompt": COPY, "max_tokens": 8, **GREEDY}).json()
    assert whole["content"] == v1["choices"][0]["text"] and whole["content"].strip()
    assert (whole["tokens_evaluated"], whole["tokens_predicted"]) == (v1["usage"]["prompt_tokens"], 8)
    assert whole["stop"] is True and whole["stop_type"] == "limit" and not whole["truncated"]
    assert whole["timings"]["predicted_n"] == 8 and whole["generation_settings"]["n_predict"] == 8
    assert whole["timings"]["prompt_n"] + whole["timings"]["cache_n"] == whole["tokens_evaluated"]
    assert whole["prompt"] == COPY and whole["model"].endswith(".gguf") and whole["index"] == 0
    assert complete(client, "/completions", prompt=COPY, n_predict=8, **GREEDY)["content"] == whole["content"]
    streamed = events(client, prompt=COPY, n_predict=8, **GREEDY)
    chunks, last = streamed[:-1], streamed[-1]
    assert len(chunks) == 8 and all(c["stop"] is False and c["index"] == 0 for c in chunks)
    assert "".join(c["content"] for c in chunks) == whole["content"]
    assert last["stop"] is True and last["content"] == "" and last["stop_type"] == "limit"
    # Each streamed chunk carries its token's id; the whole answer its ids with return_tokens (llama-server's).
    ids = [c["tokens"][0] for c in chunks]
    assert complete(client, prompt=COPY, n_predict=8, return_tokens=True, **GREEDY)["tokens"] == ids
    assert whole["tokens"] == [] and len(ids) == 8  # the sampled ids, not the text tokenized again
    assert last["timings"]["predicted_n"] == 8 and last["generation_settings"]["stream"] is True


def test_a_prompt_of_token_ids_or_of_ids_and_text_mixed_is_the_same_prompt(client):
    whole = complete(client, prompt=COPY, n_predict=8, **GREEDY)
    ids = tokenize(client, COPY, add_special=True)
    by_ids = complete(client, prompt=ids, n_predict=8, **GREEDY)
    assert by_ids["content"] == whole["content"] and by_ids["tokens_evaluated"] == len(ids)
    assert by_ids["prompt"] == COPY  # the ids as their text
    v1 = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 8, **GREEDY}).json()
    assert v1["choices"][0]["text"] == whole["content"]
    head, tail = COPY[:20], COPY[20:]
    mixed = complete(client, prompt=[*tokenize(client, head, True), tail], n_predict=8, **GREEDY)
    ids_only = [*tokenize(client, head, True), *tokenize(client, tail, False)]  # no BOS before a later text
    assert mixed["content"] == complete(client, prompt=ids_only, n_predict=8, **GREEDY)["content"]
    assert mixed["tokens_evaluated"] == len(ids_only)


def test_several_prompts_answer_in_order_whole_or_streamed(client):
    ids = tokenize(client, COPY, add_special=True)
    answers = complete(client, prompt=[COPY, ids, COUNT], n_predict=6, **GREEDY)
    assert [a["index"] for a in answers] == [0, 1, 2]
    assert answers[0]["content"] == answers[1]["content"] != answers[2]["content"]
    streamed = events(client, prompt=[COPY, COUNT], n_predict=6, **GREEDY)
    for i, answer in enumerate(answers[::2]):
        mine = [e for e in streamed if e["index"] == i]
        assert "".join(e["content"] for e in mine) == answer["content"]
        assert [e["stop"] for e in mine].count(True) == 1 and mine[-1]["stop"]


def test_n_cmpl_samples_each_answer_with_the_next_seed(client):
    sampled = {"prompt": COPY, "n_predict": 8, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0}
    answers = complete(client, **sampled, n_cmpl=2, seed=5)
    assert [a["index"] for a in answers] == [0, 1]
    assert answers[0]["content"] == complete(client, **sampled, seed=5)["content"]
    assert answers[1]["content"] == complete(client, **sampled, seed=6)["content"]  # llama-server's child seeds


def test_a_stop_word_ends_the_answer_before_it(client):
    body = {"prompt": COUNT, "n_predict": 30, **GREEDY}
    full = complete(client, **body)["content"]
    assert " 7" in full
    cut = complete(client, **body, stop=[" 7", "never", ""])
    assert cut["content"] == full[: full.index(" 7")]
    assert (cut["stop_type"], cut["stopping_word"]) == ("word", " 7")
    streamed = events(client, **body, stop=[" 7"])
    assert "".join(e["content"] for e in streamed) == cut["content"] and streamed[-1]["stop_type"] == "word"


def test_n_predict_minus_one_runs_to_the_end_and_zero_to_one_token(client):
    ended = complete(client, prompt="长城", grammar='root ::= "很长。"', n_predict=-1)
    assert ended["content"] == "很长。" and ended["stop_type"] == "eos"
    assert ended["generation_settings"]["n_predict"] == LIMIT  # -1: up to the server's limit
    one = complete(client, prompt=COPY, n_predict=0, **GREEDY)  # llama-server samples one all the same
    assert one["tokens_predicted"] == 1 and one["stop_type"] == "limit"
    too_many = client.post("/completion", json={"prompt": COPY, "n_predict": LIMIT + 1})
    assert "n_predict" in error_of(too_many, 400, "invalid_request_error")["message"]


def test_n_probs_gives_each_tokens_log_probability(client):
    whole = complete(client, prompt=COUNT, n_predict=6, n_probs=3, **GREEDY)
    probs = whole["completion_probabilities"]
    assert len(probs) == whole["tokens_predicted"] == 6
    assert "".join(p["token"] for p in probs) == whole["content"]
    assert all(p["logprob"] <= 0 and len(p["top_logprobs"]) == 3 for p in probs)
    assert all(p["top_logprobs"][0]["logprob"] >= p["logprob"] for p in probs)  # greedy: the first is the best
    streamed = events(client, prompt=COUNT, n_predict=6, n_probs=3, **GREEDY)
    assert [c["completion_probabilities"][0]["token"] for c in streamed[:-1]] == [p["token"] for p in probs]
    assert "completion_probabilities" not in streamed[-1]


def test_what_llama_vim_sends_is_taken_and_response_fields_pick_the_answer(client):
    body = {"prompt": COPY, "n_predict": 4, "cache_prompt": True, "id_slot": 0, "t_max_prompt_ms": 500,
            "return_tokens": True, "samplers": ["top_k", "top_p"], "top_k": 40, "top_p": 0.9}  # fmt: skip
    fields = ["content", "timings/predicted_n", "truncated", "no/such"]
    answer = complete(client, **body, response_fields=fields)
    assert set(answer) == {"content", "timings/predicted_n", "truncated"} and answer["timings/predicted_n"] == 4


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "kind", "says"),
    [
        ({"prompt": "长城", "no_such_field": 1}, 400, "invalid_request_error", "no_such_field"),
        ({"prompt": "长城", "top_p": "high"}, 400, "invalid_request_error", "top_p"),
        ({"prompt": [10**6]}, 400, "invalid_request_error", "outside the vocabulary"),
        ({"prompt": "长城", "dry_multiplier": 0.8}, 400, "invalid_request_error", "DRY"),
        ({"prompt": "长城", "model": "no-such-model"}, 404, "not_found_error", "no-such-model"),
        ({"input_prefix": "def f(", "input_suffix": ")"}, 400, "invalid_request_error", "fill-in-the-middle"),
    ],
)
def test_errors_come_in_llama_servers_shape(client, body, status, kind, says):
    path = "/infill" if "input_prefix" in body else "/completion"
    assert says in error_of(client.post(path, json=body), status, kind)["message"]


def test_a_prompt_over_the_context_says_its_size_and_bad_requests_change_nothing(client, server):
    before = complete(client, prompt=COPY, n_predict=8, **GREEDY)["content"]
    error = error_of(client.post("/completion", json={"prompt": "长城 " * 1500}), 400, "exceed_context_size_error")
    assert error["n_ctx"] == N_CTX and error["n_prompt_tokens"] > N_CTX
    error_of(httpx.post(f"{server.url}/completion", json={"prompt": "长城"}), 401, "authentication_error")
    error_of(httpx.get(f"{server.url}/slots", headers={"Authorization": "Bearer wrong"}), 401, "authentication_error")
    for _ in range(3):
        client.post("/completion", json={"prompt": "长城", "mirostat": 2})
    assert complete(client, prompt=COPY, n_predict=8, **GREEDY)["content"] == before
    assert not any(slot["is_processing"] for slot in client.get("/slots").json())


# -- /props and /slots --------------------------------------------------------------------------


def test_props_say_what_a_request_gets(client):
    props = client.get("/props").json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == N_CTX
    assert props["model_path"].endswith(".gguf") and props["model_alias"] == props["model_path"].rsplit("/", 1)[1]
    assert "<|im_start|>" in props["chat_template"] and props["eos_token"] == "<|im_end|>"
    assert props["modalities"] == {"vision": False, "audio": False, "video": False} and props["endpoint_slots"]
    assert props["build_info"].startswith("hychat ")
    got = complete(client, prompt="长城", grammar='root ::= "很长。"')["generation_settings"]
    assert {**got, "grammar": ""} == props["default_generation_settings"]["params"]


def first_event(lines: Iterator[str]) -> dict:
    """From a stream's lines, left open: a closed line iterator would close the connection."""
    return json.loads(next(line for line in lines if line.startswith("data:"))[5:])


def test_slots_show_the_requests_they_run_and_fail_on_no_slot(client):
    long = {"prompt": COPY, "n_predict": 2000, "ignore_eos": True, "stream": True, **GREEDY}
    with client.stream("POST", "/completion", json=long) as one, client.stream("POST", "/completion", json=long) as two:
        lines = [one.iter_lines(), two.iter_lines()]
        evaluated = {first_event(lines[0])["tokens_evaluated"], first_event(lines[1])["tokens_evaluated"]}
        slots = client.get("/slots").json()
        assert [s["id"] for s in slots] == [0, 1] and all(s["is_processing"] for s in slots)
        assert {s["n_prompt_tokens"] for s in slots} == evaluated and all(s["n_ctx"] == N_CTX for s in slots)
        assert all(s["next_token"][0]["n_decoded"] >= 1 for s in slots)
        busy = client.get("/slots", params={"fail_on_no_slot": "1"})
        assert error_of(busy, 503, "unavailable_error")["message"] == "no slot available"
    deadline = time.monotonic() + 120  # bounds a hang: the streams closed, their slots free at the next step
    while any(s["is_processing"] for s in client.get("/slots").json()) and time.monotonic() < deadline:
        time.sleep(0.05)
    slots = client.get("/slots", params={"fail_on_no_slot": "1"}).json()
    assert not any(s["is_processing"] or "next_token" in s for s in slots)
    assert any(s["n_cached"] >= len(tokenize(client, COPY, True)) for s in slots)  # kept for the next request


def test_slots_can_be_switched_off(start_server):
    server = start_server({"HYCHAT_ENDPOINT_SLOTS": "false"})
    error_of(httpx.get(f"{server.url}/slots"), 501, "not_supported_error")
    assert httpx.get(f"{server.url}/props").json()["endpoint_slots"] is False


# -- /infill ------------------------------------------------------------------------------------

PREFIX = "def 长城(x):\n    "
SUFFIX = "\n    return y\n"


@pytest.fixture(scope="module")
def coder(start_server, coder_gguf):
    with httpx.Client(base_url=start_server({"HYCHAT_LLAMACPP_MODEL_PATH": str(coder_gguf)}).url, timeout=300) as c:
        yield c


def test_an_infill_equals_ollamas_generate_with_a_suffix(coder):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 12, **GREEDY}
    infill = complete(coder, "/infill", **body)
    ollama = coder.post(
        "/api/generate",
        json={"model": "coder-f32.gguf", "prompt": PREFIX, "suffix": SUFFIX, "stream": False,
              "options": {"temperature": 0, "num_predict": 12}},
    ).json()  # fmt: skip
    assert infill["content"] == ollama["response"] and infill["tokens_evaluated"] == ollama["prompt_eval_count"]
    assert infill["prompt"].endswith(f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>")
    streamed = events(coder, "/infill", **body)
    assert "".join(e["content"] for e in streamed) == infill["content"]


def test_an_infill_takes_other_files_and_the_start_of_the_line(coder):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 4, **GREEDY}
    extra = [{"filename": "长城.py", "text": "长度 = 21196\n", "time": 1}, {"text": "x = 1\n"}]
    answer = complete(coder, "/infill", **body, input_extra=extra, prompt="y = ")
    assert "<|file_sep|>长城.py\n长度 = 21196\n<|file_sep|>tmp\nx = 1\n" in answer["prompt"]
    assert f"<|fim_prefix|>{PREFIX}y = <|fim_suffix|>" in answer["prompt"]


@pytest.mark.parametrize(
    "input_extra",
    [{}, {"filename": "ok"}, {"filename": 123}, {"filename": 123, "text": "abc"}, {"filename": 123, "text": 456}],
)
def test_bad_extra_files_are_refused_as_llama_server_does(coder, input_extra):
    """llama-server's own test_infill.py::test_invalid_input_extra_req."""
    body = {
        "input_extra": [input_extra],
        "input_prefix": PREFIX,
        "prompt": "    int n_threads = llama_",
        "input_suffix": "}\n",
    }
    assert "extra_context chunk" in error_of(coder.post("/infill", json=body), 400, "invalid_request_error")["message"]
    assert error_of(coder.post("/infill", json={"input_prefix": PREFIX}), 400, "invalid_request_error")["message"] == (
        '"input_suffix" is required'
    )


def test_llama_vims_request_with_the_infill_sampler_is_served(coder):
    """llama.vim and llama.vscode name llama.cpp's infill sampler in every request."""
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8, "samplers": ["top_k", "top_p", "infill"],
            "top_k": 40, "top_p": 0.99, "seed": 3, "cache_prompt": True, "t_max_prompt_ms": 500}  # fmt: skip
    first, again = complete(coder, "/infill", **body), complete(coder, "/infill", **body)
    assert (first["content"], first["stop_type"]) == (again["content"], again["stop_type"])
    assert first["stop_type"] in ("eos", "limit")  # the infill sampler may end the middle at once: it is empty
