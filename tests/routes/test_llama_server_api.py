"""llama-server's native API (`/completion`, `/completions`, `/infill`, `/props`, `/slots`) through a
real server: llama.cpp on the embedded SmolLM2 GGUF with two slots, and for /infill a tiny random
HunYuan with Qwen2.5-Coder's FIM tokens (its GGUF made by the product's converter). Clients see what
llama-server's own tests assert; the answers are held against /v1/completions and Ollama's generate
with a suffix, the other paths to the same model. The conversions alone:
tests/protocol/test_llama_server_conversions.py."""

from __future__ import annotations

import json
import math
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


def test_n_probs_entries_name_their_token_ids(client):
    whole = complete(client, prompt=COUNT, n_predict=6, n_probs=3, return_tokens=True, **GREEDY)
    probs = whole["completion_probabilities"]
    assert [p["id"] for p in probs] == whole["tokens"]
    assert all(p["top_logprobs"][0]["id"] == p["id"] for p in probs)  # greedy: the best one is taken
    ids = [t["id"] for t in probs[0]["top_logprobs"]]
    pieces = client.post("/detokenize", json={"tokens": ids[1:2]}).json()["content"]
    assert pieces == probs[0]["top_logprobs"][1]["token"]


TODAY = "Today was the day. Today I would finally become a"


def test_post_sampling_probs_are_those_the_sampler_chain_drew_from(client):
    greedy = complete(client, prompt=COUNT, n_predict=4, n_probs=5, post_sampling_probs=True, return_tokens=True,
                      **GREEDY)  # fmt: skip
    for p, token in zip(greedy["completion_probabilities"], greedy["tokens"], strict=True):
        assert (p["id"], p["prob"], "logprob" in p) == (token, 1.0, False)  # temperature 0 leaves one token
        assert p["top_probs"] == [{"id": token, "token": p["token"], "bytes": p["bytes"], "prob": 1.0}]
    # top_k 3 at temperature 1: what is left is the model's three best, their probabilities scaled to sum 1.
    body = {"prompt": TODAY, "n_predict": 8, "n_probs": 10, "temperature": 1.0, "top_k": 3, "top_p": 1.0,
            "min_p": 0.0, "seed": 7, "return_tokens": True}  # fmt: skip
    drawn = complete(client, **body, post_sampling_probs=True)
    model = complete(client, **body)
    assert drawn["content"] == model["content"]  # how the probabilities are reported changes no draw
    assert [p["id"] for p in drawn["completion_probabilities"]] == drawn["tokens"]
    for post, pre in zip(drawn["completion_probabilities"], model["completion_probabilities"], strict=True):
        best = pre["top_logprobs"][:3]
        total = sum(math.exp(t["logprob"]) for t in best)
        assert [t["id"] for t in post["top_probs"]] == [t["id"] for t in best]
        assert [t["prob"] for t in post["top_probs"]] == pytest.approx([math.exp(t["logprob"]) / total for t in best])
        assert post["prob"] == next(t["prob"] for t in post["top_probs"] if t["id"] == post["id"])
    chunks = events(client, **body, post_sampling_probs=True)[:-1]
    assert [c["completion_probabilities"][0] for c in chunks] == drawn["completion_probabilities"]


SAY_HI = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"


def test_ignore_eos_bans_every_end_of_generation_token_as_llama_server_reports(client):
    ended = complete(client, prompt=SAY_HI, n_predict=64, **GREEDY)
    assert ended["stop_type"] == "eos" and ended["tokens_predicted"] < 64
    assert ended["generation_settings"]["logit_bias"] == []
    on = complete(client, prompt=SAY_HI, n_predict=64, ignore_eos=True, return_tokens=True, **GREEDY)
    banned = on["generation_settings"]["logit_bias"]
    assert banned and all(entry["bias"] is None for entry in banned)  # null: -inf
    assert tokenize(client, "<|im_end|>", False)[0] in {entry["token"] for entry in banned}
    assert on["stop_type"] == "limit" and len(on["tokens"]) == 64
    assert not {entry["token"] for entry in banned} & set(on["tokens"])
    assert on["content"].startswith(ended["content"])
    biased = complete(client, prompt=SAY_HI, n_predict=2, logit_bias=[["Hello", -2.0]], **GREEDY)
    assert biased["generation_settings"]["logit_bias"] == [{"bias": -2.0, "token": tokenize(client, "Hello", False)[0]}]


def test_what_llama_vim_sends_is_taken_and_response_fields_pick_the_answer(client):
    body = {"prompt": COPY, "n_predict": 4, "cache_prompt": True, "id_slot": 0, "t_max_prompt_ms": 500,
            "return_tokens": True, "samplers": ["top_k", "top_p"], "top_k": 40, "top_p": 0.9}  # fmt: skip
    fields = ["content", "timings/predicted_n", "truncated", "no/such"]
    answer = complete(client, **body, response_fields=fields)
    assert set(answer) == {"content", "timings/predicted_n", "truncated"} and answer["timings/predicted_n"] == 4
    assert complete(client, **body, response_fields=[]).keys() == complete(client, **body).keys()  # []: all of them


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
        assert all(s["speculative"] for s in slots)  # drafting is on by default
        busy = client.get("/slots", params={"fail_on_no_slot": "1"})
        assert error_of(busy, 503, "unavailable_error")["message"] == "no slot available"
    deadline = time.monotonic() + 120  # bounds a hang: the streams closed, their slots free at the next step
    while any(s["is_processing"] for s in client.get("/slots").json()) and time.monotonic() < deadline:
        time.sleep(0.05)
    slots = client.get("/slots", params={"fail_on_no_slot": "1"}).json()
    assert not any(s["is_processing"] or "next_token" in s for s in slots)
    assert any(s["n_cached"] >= len(tokenize(client, COPY, True)) for s in slots)  # kept for the next request


def wait_until_idle(client: httpx.Client) -> list[dict]:
    deadline = time.monotonic() + 300  # bounds a hang only
    while any(s["is_processing"] for s in client.get("/slots").json()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return client.get("/slots", params={"fail_on_no_slot": "1"}).json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completion", {"prompt": COUNT, "n_predict": 2000}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": COUNT}], "max_tokens": 2000}),
    ],
)
def test_a_client_that_leaves_before_a_whole_answer_stops_its_generation(server, client, path, body):
    """As llama-server's test_cancel_request: a non-streamed answer's client times out; its slot is
    free long before 2000 tokens, which it holds the cells of when run to the end."""
    wait_until_idle(client)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}{path}", json={**body, "ignore_eos": True, **GREEDY}, headers=AUTH, timeout=1)
    slots = wait_until_idle(client)
    assert not any(s["is_processing"] for s in slots)
    assert max(s["n_cached"] for s in slots) < 1900  # stopped early: the prompt and the tokens made before


def test_slots_can_be_switched_off(start_server):
    server = start_server({"HYCHAT_ENDPOINT_SLOTS": "false"})
    error_of(httpx.get(f"{server.url}/slots"), 501, "not_supported_error")
    assert httpx.get(f"{server.url}/props").json()["endpoint_slots"] is False


# -- a KV cache the slots share (--kv-unified) -------------------------------------------------


@pytest.fixture(scope="module")
def unified(start_server):
    """llama-server's -c 256 -np 2 --kv-unified: 256 cells for both slots, any request may fill them."""
    with httpx.Client(base_url=start_server({}, "--kv-unified", "-c", "256", "-np", "2").url, timeout=300) as c:
        yield c


def long_answer(n_predict: int, prompt: str = "A") -> dict:
    return {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, **GREEDY}


def test_with_kv_unified_a_request_may_use_every_cell(unified):
    props = unified.get("/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 256 and props["total_slots"] == 2
    assert complete(unified, **long_answer(200))["timings"]["predicted_n"] == 200  # past its share, 128


def test_with_kv_unified_idle_slots_give_up_their_cells_when_room_is_needed(unified):
    with unified.stream("POST", "/completion", json={**long_answer(200, "B"), "stream": True}) as busy:
        lines = busy.iter_lines()
        first_event(lines)  # slot 0 runs it: a short answer goes to slot 1, its cells kept
        short = complete(unified, **long_answer(2, "Once upon a time"))
        assert json.loads([line for line in lines if line.startswith("data:")][-1][5:])["stop"] is True
    cached = sorted(s["n_cached"] for s in unified.get("/slots").json())
    assert cached[0] < 10 and cached[1] >= 199
    # Slot 1 (its prefix) takes it: 200 cells beside slot 0's 200 fit once slot 0's are dropped.
    answer = complete(unified, **long_answer(200, "Once upon a time"))
    assert answer["timings"]["predicted_n"] == 200 and answer["content"].startswith(short["content"])


def test_with_kv_unified_a_full_cache_fails_every_running_request_as_llama_server(unified):
    body = {**long_answer(250, "C"), "stream": True}
    with unified.stream("POST", "/completion", json=body) as one:
        lines = one.iter_lines()
        first_event(lines)
        with unified.stream("POST", "/completion", json={**body, "prompt": "D"}) as two:
            ends = [json.loads(line[5:]) for line in [*lines, *two.iter_lines()] if line.startswith("data:")]
    errors = [e["error"] for e in ends if "error" in e]
    assert len(errors) == 2 and not any(e.get("stop") for e in ends)
    assert all(e["code"] == 500 and "context size has been exceeded" in e["message"].lower() for e in errors)
    assert complete(unified, **long_answer(250, "C"))["timings"]["predicted_n"] == 250  # the cells were freed


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
