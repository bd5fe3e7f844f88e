"""Speculative decoding against plain decoding, here and in llama.cpp's native `llama-server`: one
stream on tasks whose answer repeats its prompt (rewrite a code file with one change, quote a
passage back, fill a JSON template), then free-form chat at 1, 4 and 8 streams.

    .venv/bin/python -m benchmarks.speculative --llama-server ~/.cache/llama-tools/0.3.36/bin/llama-server

With `--draft-model`, the draft model instead: `--model` the target, the draft beside it, here and in
llama-server (-md), against each one's plain decoding, on the same tasks and one chat stream:

    hychat quantize $EMBEDDED /tmp/smol.f16.gguf --type f16 --allow-requantize
    hychat quantize $EMBEDDED /tmp/smol.q4_0.gguf --type q4_0 --allow-requantize
    .venv/bin/python -m benchmarks.speculative --llama-server ... --model /tmp/smol.f16.gguf \
        --draft-model /tmp/smol.q4_0.gguf

Every server runs at once (same GGUF, threads, slots, context per slot) and the runs are interleaved:
each round runs each task on each server in turn, so a slower minute of the machine falls on all
of them. Answers are greedy. Decode speed is an answer's tokens after its first over the time after
its first token, as the client sees them stream. llama-server runs with each of its n-gram modes
(their defaults, and ngram-simple tuned as hychat's drafter), so "its best" is the best of those.
Results go to benchmarks/results/speculative.json (`--out`); `--repetitive-only` leaves out the chat
levels (a few minutes instead of half an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx

from benchmarks.charts import horizontal_bars
from benchmarks.serve_vs_llama_server import start_hychat, start_llama_server, wait_ready
from config.settings import embedded_model_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "speculative.json"
DRAFT_RESULTS = Path(__file__).parent / "results" / "speculative_draft.json"
CODE = (ROOT / "app" / "engine" / "admission.py").read_text(encoding="utf-8")
PASSAGE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")[:1500]
TEMPLATE = '{"name": "", "city": "", "age": 0, "languages": [], "email": ""}'
TASKS = {
    "rewrite code": f"Rewrite this Python file with `choose_slot` renamed to `pick_slot`. Output it whole.\n\n{CODE}",
    "quote a passage": f"Quote the following passage back exactly, word for word.\n\n{PASSAGE}",
    "fill a JSON template": "Fill this JSON template for five different people, one object per line:\n\n"
    + "\n".join([TEMPLATE] * 5),
}
# Free chat: each stream of each round its own question, so that no server's memory of an earlier
# answer (hychat's n-gram memory, llama-server's ngram-mod) drafts it. One answer's speed varies by
# several percent, and a wave of several streams lasts as long as its longest answer, so each level
# asks WAVES waves one after another (one stream: SINGLES questions): a round needs 4 + 4 * 2 + 8 * 2.
SINGLES, WAVES = 4, 2
WARM_UP = "Say hello."  # asked of each server before the rounds, unlike any question measured
TOPICS = [
    ("a robot learning to paint", "长城的历史"), ("how a bicycle works", "秋天的诗"),
    ("why the sky is blue", "熊猫的生活"), ("how airplanes fly", "中国的茶文化"),
    ("the city of Paris", "春节的习俗"), ("volcanoes", "黄河"),
    ("the history of chess", "月饼的做法"), ("how bees make honey", "西湖的风景"),
    ("the moon landing", "京剧"), ("a day in a lighthouse", "二十四节气"),
    ("how rain forms", "丝绸之路"), ("the first computers", "书法"),
    ("a cat who learns to swim", "竹子"), ("the deep ocean", "长江三峡"),
    ("how a violin is made", "饺子"), ("a trip to Mars", "故宫"),
    ("the life of ants", "围棋"), ("an old library", "桂林山水"),
    ("how bread rises", "中秋节"), ("northern lights", "兵马俑"),
]  # fmt: skip
FORMS = [  # (English, Chinese) questions about a topic
    ("Write a short piece about {}.", "请用中文写一段关于{}的介绍。"),
    ("Explain {} to a child.", "请给小朋友讲讲{}。"),
    ("Tell a story about {}.", "请讲一个关于{}的故事。"),
]
CHATS = [
    question
    for en, zh in FORMS
    for topic_en, topic_zh in TOPICS
    for question in (en.format(topic_en), zh.format(topic_zh))
]
LLAMA_NGRAM_MODES = {
    "ngram-simple": ["--spec-type", "ngram-simple"],
    "ngram-simple n=3 m=16": ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
                              "--spec-ngram-simple-size-m", "16"],
    "ngram-map-k": ["--spec-type", "ngram-map-k"],
    "ngram-mod": ["--spec-type", "ngram-mod"],
}  # fmt: skip


def stream(url: str, content: str, max_tokens: int, cache_prompt: bool = True) -> dict:
    """One greedy chat answer, streamed: its tokens, decode tokens/s, and the drafts it reports.
    `cache_prompt` False (both servers' option): the prompt is read whole, as the first time."""
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache_prompt": cache_prompt,
    }
    start, first, last, usage, timings = time.perf_counter(), None, None, {}, {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage, timings = chunk.get("usage") or usage, chunk.get("timings") or timings
            delta = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
            if delta:
                last = time.perf_counter()
                first = first or last
    n = usage.get("completion_tokens", 0)
    details = usage.get("completion_tokens_details") or {}
    accepted = details.get("accepted_prediction_tokens", timings.get("draft_n_accepted", 0))
    drafted = accepted + details.get("rejected_prediction_tokens", 0) if details else timings.get("draft_n", 0)
    seconds = (last - first) if first is not None and last is not None else 0.0
    return {
        "tokens": n,
        "decode_tokens_per_s": (n - 1) / seconds if n > 1 and seconds > 0 else 0.0,
        "ttft_s": (first or time.perf_counter()) - start,
        "drafted": drafted,
        "accepted": accepted,
    }


def concurrent(url: str, streams: int, max_tokens: int, first: int = 0, waves: int = 1) -> float:
    """Aggregate tokens/s of `streams` chats at once (CHATS from `first` on), `waves` times one after
    the other, from the first request to the last token."""
    results: list[dict] = []
    start = time.perf_counter()
    for wave in range(waves):
        chats = [CHATS[(first + wave * streams + i) % len(CHATS)] for i in range(streams)]
        threads = [threading.Thread(target=lambda c=c: results.append(stream(url, c, max_tokens))) for c in chats]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(r["tokens"] for r in results) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--draft-model", help="measure this draft model for --model instead")
    parser.add_argument("--chart", type=Path, help="a PNG of the ratios (needs matplotlib)")
    parser.add_argument("--repetitive-only", action="store_true", help="no free chat (a few minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the raw JSON goes")
    args = parser.parse_args()
    shape = (args.threads, 8, 2048)
    if args.draft_model:
        return draft_main(args, shape)
    starts = {
        "hychat, plain": lambda port: start_hychat(args.model, port, *shape, "--spec-type", "none"),
        "hychat, speculative": lambda port: start_hychat(args.model, port, *shape),
        "llama-server, plain": lambda port: start_llama_server(args.llama_server, args.model, port, *shape),
        **{
            f"llama-server, {mode}": lambda port, flags=flags: start_llama_server(
                args.llama_server, args.model, port, *shape, *flags
            )
            for mode, flags in LLAMA_NGRAM_MODES.items()
        },
    }
    repetitive, chat = measure(starts, args.rounds, args.max_tokens, () if args.repetitive_only else (1, 4, 8))
    summary = summarize(repetitive, chat)
    print(json.dumps(summary, indent=2))
    settings = {"model": Path(args.model).name, "threads": args.threads, "slots": 8, "n_ctx": 2048,
                "rounds": args.rounds, "max_tokens": args.max_tokens}  # fmt: skip
    raw = {"repetitive": repetitive, "chat_tokens_per_s": chat}
    args.out.write_text(json.dumps({"settings": settings, "summary": summary, "raw": raw}, indent=2) + "\n")
    if args.chart:
        chart(summary, args.chart, f"{settings['model']}, {args.threads} threads, greedy")


def measure(starts: dict, rounds: int, max_tokens: int, levels: tuple[int, ...]) -> tuple[dict, dict]:
    """Every server at once, each task then each chat level on each in turn, `rounds` times."""
    urls = {name: f"http://127.0.0.1:{8801 + i}" for i, name in enumerate(starts)}
    processes = [start(8801 + i) for i, start in enumerate(starts.values())]
    try:
        for url in urls.values():
            wait_ready(url)
            stream(url, WARM_UP, 16)  # a first answer pages the weights in: not measured
        repetitive: dict = {task: {name: [] for name in urls} for task in TASKS}
        chat: dict = {str(n): {name: [] for name in urls} for n in levels}
        for round_ in range(rounds):
            # Every other round the servers go in the other order, so none is always first after a wait.
            order = list(urls.items())[:: 1 if round_ % 2 == 0 else -1]
            for task, content in TASKS.items():
                for name, url in order:
                    # The prompt read whole each time: read after a cached part, its logits round
                    # otherwise and a greedy answer may change, so rounds would time other answers.
                    repetitive[task][name].append(stream(url, content, max_tokens, cache_prompt=False))
            waves = {n: SINGLES if n == "1" else WAVES for n in chat}
            first = round_ * sum(int(n) * waves[n] for n in chat)  # questions no round asked before
            for n in chat:
                for name, url in order:
                    chat[n][name].append(concurrent(url, int(n), 128, first, waves[n]))
                first += int(n) * waves[n]
            print(f"round {round_ + 1} of {rounds} done", flush=True)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    return repetitive, chat


def draft_main(args: argparse.Namespace, shape: tuple[int, int, int]) -> None:
    """Benchmark 3: a draft model beside the target, here and in llama-server, against plain."""
    md = ("--model-draft", args.draft_model)
    starts = {
        "hychat, plain": lambda port: start_hychat(args.model, port, *shape, "--spec-type", "none"),
        "hychat, draft model": lambda port: start_hychat(args.model, port, *shape, *md),
        "llama-server, plain": lambda port: start_llama_server(args.llama_server, args.model, port, *shape),
        "llama-server, -md": lambda port: start_llama_server(args.llama_server, args.model, port, *shape, "-md",
                                                             args.draft_model, "--spec-type", "draft-simple"),
    }  # fmt: skip
    repetitive, chat = measure(starts, args.rounds, args.max_tokens, (1,))
    summary: dict = {"repetitive": {}, "chat": {}}
    for task, runs in repetitive.items():
        speeds = {name: statistics.median(r["decode_tokens_per_s"] for r in rs) for name, rs in runs.items()}
        summary["repetitive"][task] = {
            "decode_tokens_per_s": speeds,
            "acceptance": {name: _acceptance(rs) for name, rs in runs.items()},
            "draft_vs_plain": speeds["hychat, draft model"] / speeds["hychat, plain"],
            "draft_vs_llama_server_md": speeds["hychat, draft model"] / speeds["llama-server, -md"],
            "llama_server_md_vs_plain": speeds["llama-server, -md"] / speeds["llama-server, plain"],
        }
    speeds = {name: statistics.median(rs) for name, rs in chat["1"].items()}
    summary["chat"]["1"] = {"tokens_per_s": speeds}
    print(json.dumps(summary, indent=2))
    settings = {"model": Path(args.model).name, "draft_model": Path(args.draft_model).name, "threads": args.threads,
                "slots": 8, "n_ctx": 2048, "rounds": args.rounds, "max_tokens": args.max_tokens}  # fmt: skip
    raw = {"repetitive": repetitive, "chat_tokens_per_s": chat}
    DRAFT_RESULTS.write_text(json.dumps({"settings": settings, "summary": summary, "raw": raw}, indent=2) + "\n")


def summarize(repetitive: dict, chat: dict) -> dict:
    """Medians, and the ratios the issue asks for: speculative over plain here, over llama-server's best.
    A task's answers are greedy, so all are about as long; a round whose answer stopped at less than
    half the usual length (seen: llama-server's ngram-mod ending a quote after 4 tokens) is counted,
    not timed."""
    out: dict = {"repetitive": {}, "chat": {}}
    for task, runs in repetitive.items():
        usual = statistics.median(r["tokens"] for rs in runs.values() for r in rs)
        whole = {name: [r for r in rs if 2 * r["tokens"] >= usual] for name, rs in runs.items()}
        speeds = {name: statistics.median(r["decode_tokens_per_s"] for r in rs) for name, rs in whole.items() if rs}
        best = max((name for name in speeds if name.startswith("llama-server")), key=speeds.__getitem__)
        out["repetitive"][task] = {
            "decode_tokens_per_s": speeds,
            "cut_short": {name: len(runs[name]) - len(rs) for name, rs in whole.items() if len(rs) < len(runs[name])},
            "acceptance": {name: _acceptance(rs) for name, rs in runs.items()},
            "speculative_vs_plain": speeds["hychat, speculative"] / speeds["hychat, plain"],
            "llama_server_best": best,
            "speculative_vs_llama_server_best": speeds["hychat, speculative"] / speeds[best],
        }
    for n, runs in chat.items():
        speeds = {name: statistics.median(rs) for name, rs in runs.items()}
        out["chat"][n] = {
            "tokens_per_s": speeds,
            "speculative_vs_plain": speeds["hychat, speculative"] / speeds["hychat, plain"],
            "speculative_vs_llama_server_plain": speeds["hychat, speculative"] / speeds["llama-server, plain"],
        }
    return out


def _acceptance(runs: list[dict]) -> float:
    return sum(r["accepted"] for r in runs) / max(sum(r["drafted"] for r in runs), 1)


def chart(summary: dict, path: Path, title: str) -> None:
    bars = {}
    for task, s in summary["repetitive"].items():
        ratio = s["speculative_vs_plain"]
        bars[f"{task}: vs plain"] = (ratio, f"{ratio:.2f}x")
        ratio = s["speculative_vs_llama_server_best"]
        bars[f"{task}: vs llama-server's best"] = (ratio, f"{ratio:.2f}x ({s['llama_server_best'][14:]})")
    for n, s in summary["chat"].items():
        streams = f"chat, {n} stream{'s' if n != '1' else ''}"
        ratio = s["speculative_vs_plain"]
        bars[f"{streams}: vs plain"] = (ratio, f"{ratio:.2f}x")
        ratio = s["speculative_vs_llama_server_plain"]
        bars[f"{streams}: vs llama-server"] = (ratio, f"{ratio:.2f}x")
    horizontal_bars(path, bars, "hychat speculative decode speed, ratio", title)


if __name__ == "__main__":
    main()
