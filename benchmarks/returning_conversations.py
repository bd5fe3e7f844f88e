"""Conversations that return after others took their slot: 16 conversations of 6 turns on 4 slots,
round-robin, each turn streamed; the time to the first token of turns 2-6, on this server with its
host-memory prompt cache (`--cache-ram`, llama-server's name) and without, and on llama.cpp's native
`llama-server` with and without its own. Each server starts fresh for its run; same GGUF, threads,
slots and context per slot.

    .venv/bin/python -m benchmarks.returning_conversations --llama-server ~/.cache/llama-tools/0.3.36/bin/llama-server

Each conversation opens with its own passage of docs/architecture.md (a few hundred tokens), so a
returning one has history worth keeping. Results go to benchmarks/results/returning_conversations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import httpx

from benchmarks.charts import horizontal_bars
from benchmarks.serve_vs_llama_server import start_hychat, start_llama_server, wait_ready
from config.settings import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "returning_conversations.json"
PASSAGES = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")


def first_token_s(url: str, messages: list[dict], max_tokens: int) -> tuple[float, str]:
    """Seconds to the first streamed text, and the whole answer."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first, text = time.perf_counter(), None, ""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - start
            text += piece
    return (first if first is not None else time.perf_counter() - start), text


def run(url: str, conversations: int, turns: int, max_tokens: int) -> list[list[float]]:
    """The first-token times of each turn (a list per turn, one per conversation)."""
    history = [
        [{"role": "user", "content": "请读这段文字，然后用中文总结它：\n" + PASSAGES[i * 700 : i * 700 + 700]}]
        for i in range(conversations)
    ]
    times: list[list[float]] = [[] for _ in range(turns)]
    for turn in range(turns):
        for messages in history:
            seconds, answer = first_token_s(url, messages, max_tokens)
            times[turn].append(seconds)
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "继续，再多讲一点。"}]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cache-ram", type=int, default=512, help="MiB, both servers' host cache")
    parser.add_argument("--chart", type=Path, help="a PNG of the medians (needs matplotlib)")
    args = parser.parse_args()
    shape = (args.threads, 4, 2048)
    cram = str(args.cache_ram)
    servers = {
        "hychat, host cache": lambda: start_hychat(args.model, 8793, *shape, "--cache-ram", cram),
        "hychat, no host cache": lambda: start_hychat(args.model, 8793, *shape, "--cache-ram", "0"),
        "llama-server, --cache-ram": lambda: start_llama_server(args.llama_server, args.model, 8794, *shape,
                                                                "--no-webui", "--cache-ram", cram),
        "llama-server, --cache-ram 0": lambda: start_llama_server(args.llama_server, args.model, 8794, *shape,
                                                                  "--no-webui", "--cache-ram", "0"),
    }  # fmt: skip
    results = {}
    for name, start in servers.items():
        process = start()
        url = "http://127.0.0.1:8793" if name.startswith("hychat") else "http://127.0.0.1:8794"
        try:
            wait_ready(url)
            times = run(url, args.conversations, args.turns, args.max_tokens)
        finally:
            process.terminate()
            process.wait()
        returning = [t for turn in times[1:] for t in turn]
        results[name] = {"first_turn_ttft_s": statistics.median(times[0]),
                         "returning_ttft_s": statistics.median(returning), "per_turn": times}  # fmt: skip
        print(name, results[name]["first_turn_ttft_s"], results[name]["returning_ttft_s"], flush=True)
    settings = {"model": Path(args.model).name, "threads": args.threads, "slots": 4, "n_ctx": 2048,
                "conversations": args.conversations, "turns": args.turns, "max_tokens": args.max_tokens,
                "cache_ram_mib": args.cache_ram}  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    if args.chart:
        chart(results, args.chart, f"{settings['model']}: {args.conversations} conversations on 4 slots")


def chart(results: dict[str, dict], path: Path, title: str) -> None:
    ms = {name: r["returning_ttft_s"] * 1000 for name, r in results.items()}
    bars = {name: (value, f"{value:.0f} ms") for name, value in ms.items()}
    horizontal_bars(path, bars, "time to first token of turns 2-6, median (ms)", title)


if __name__ == "__main__":
    main()
