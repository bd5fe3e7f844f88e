"""Replicas on a Ray cluster against one process, on this machine: aggregate tokens/s of 4 and 8
concurrent streams with one process of 1 thread, two replicas of 1 thread each (`hychat serve --ray
local`), and one process of 2 threads; then returning conversations (8 of 4 turns, round-robin, each
opening with its own passage) on the two replicas with prefix-affinity routing and with Ray's balanced
routing: time to the first token of turns 2-4.

    .venv/bin/python -m benchmarks.scaling --chart docs/scaling.png

Each round starts each server in turn, alone on the machine, measures it and stops it (an idle Ray cluster
takes about 15% of a core). Results go to benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.charts import horizontal_bars
from benchmarks.returning_conversations import PASSAGES, first_token_s
from benchmarks.serve_vs_llama_server import start_hychat, wait_ready
from benchmarks.speculative import concurrent
from config.settings import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "scaling.json"
CLUSTER = ("--ray", "local", "--replicas", "2")
PORT = 8831


def returning(url: str, conversations: int, turns: int, offset: int) -> tuple[list[float], list[float]]:
    """First-token seconds of the first turns and of the later ones."""
    history = [
        [{"role": "user", "content": "请读这段文字，然后用中文总结它：\n" + PASSAGES[(offset + i) * 500 :][:500]}]
        for i in range(conversations)
    ]
    first, later = [], []
    for turn in range(turns):
        for messages in history:
            seconds, answer = first_token_s(url, messages, 16)
            (later if turn else first).append(seconds)
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "继续，再多讲一点。"}]
    return first, later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chart", type=Path, help="a PNG of the results (needs matplotlib)")
    args = parser.parse_args()
    m = args.model
    servers = {  # name: what starts it; 8 slots in all each, 2048 tokens a slot
        "one process, 1 thread": lambda port: start_hychat(m, port, 1, 8, 2048),
        "2 replicas × 1 thread, prefix routing": lambda port: start_hychat(m, port, 1, 4, 2048, *CLUSTER),
        "2 replicas × 1 thread, balanced routing": lambda port: start_hychat(m, port, 1, 4, 2048, *CLUSTER,
                                                                             "--ray-routing", "balanced"),
        "one process, 2 threads": lambda port: start_hychat(m, port, 2, 8, 2048),
    }  # fmt: skip
    throughput = {name: {4: [], 8: []} for name in servers if "balanced" not in name}
    ttft = {name: {"first": [], "later": []} for name in servers if "replicas" in name}
    for r in range(args.rounds):
        for i, (name, start) in enumerate(servers.items()):
            # One server at a time: an idle Ray cluster takes ~15% of a core, which would slow the others.
            # A port of its own each: a stopped cluster's proxy may hold its port for a while.
            port = PORT + len(servers) * r + i
            process, url = start(port), f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, timeout_s=300)
                for streams in throughput.get(name, {}):
                    throughput[name][streams].append(concurrent(url, streams, 128))
                if name in ttft:  # new conversations each round
                    first, later = returning(url, 8, 4, offset=8 * r)
                    ttft[name]["first"] += first
                    ttft[name]["later"] += later
            finally:
                process.terminate()
                process.wait()
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    summary = {
        "tokens_per_s": {name: {n: statistics.median(v) for n, v in runs.items()} for name, runs in throughput.items()},
        "ttft_s": {name: {k: statistics.median(v) for k, v in t.items()} for name, t in ttft.items()},
    }
    settings = {"model": Path(m).name, "rounds": args.rounds, "max_tokens": 128, "conversations": 8, "turns": 4}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "summary": summary,
                                   "raw": {"tokens_per_s": throughput, "ttft_s": ttft}}, indent=2) + "\n")  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.chart:
        chart(summary, args.chart)


def chart(summary: dict, path: Path) -> None:
    bars = {f"{name}, {n} streams": (v, f"{v:.0f} tokens/s")
            for name, levels in summary["tokens_per_s"].items() for n, v in levels.items()}  # fmt: skip
    horizontal_bars(path, bars, "aggregate decode tokens/s (median)", "2 cores: replicas on Ray against one process")
    ttft = {f"{name.split(', ')[1]}": (t["later"] * 1000, f"{t['later'] * 1000:.0f} ms")
            for name, t in summary["ttft_s"].items()}  # fmt: skip
    horizontal_bars(path.with_name(path.stem + "_ttft.png"), ttft, "time to first token of turns 2-4, median (ms)",
                    "2 replicas: returning conversations by routing")  # fmt: skip


if __name__ == "__main__":
    main()
