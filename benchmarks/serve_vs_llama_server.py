"""This server against llama.cpp's native `llama-server`, same GGUF, threads, slots and context per
slot, measured in one run with rounds alternating between the two (the machine is shared and its
clock drifts: only ratios within one run mean anything).

    .venv/bin/python benchmarks/serve_vs_llama_server.py --llama-server ~/.cache/llama-tools/0.3.36/bin/llama-server

`llama-server` is not part of the product: ../shared/tools/build-llama-tools.sh builds it from the
pinned llama-cpp-python source distribution. Results go to benchmarks/results/serve_vs_llama_server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from app.bench.loadgen import run_level
from config.settings import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "serve_vs_llama_server.json"


def start_hychat(model: str, port: int, threads: int, slots: int, n_ctx: int, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "app", "serve", "--port", str(port), "--model", model, *flags]
    command += ["--threads", str(threads), "--parallel", str(slots), "--n-ctx", str(n_ctx)]
    env = {**os.environ, "HYCHAT_LOG_LEVEL": "warning"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_llama_server(
    binary: str, model: str, port: int, threads: int, slots: int, n_ctx: int, *flags: str
) -> subprocess.Popen:
    command = [binary, "-m", model, "--port", str(port), "-t", str(threads), "-tb", str(threads), *flags]
    command += ["-np", str(slots), "-c", str(n_ctx * slots), "--no-webui"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--n-ctx", type=int, default=2048, help="Tokens per slot.")
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    shape = (args.threads, args.slots, args.n_ctx)
    servers = {
        "hychat": (start_hychat(args.model, 8791, *shape), "http://127.0.0.1:8791"),
        "llama-server": (start_llama_server(args.llama_server, args.model, 8792, *shape), "http://127.0.0.1:8792"),
    }
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for _, url in servers.values():
            wait_ready(url)
            run_level(url, 1, 8)  # warm-up
        for round_no in range(args.rounds):
            order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
            for name in order:
                for c in levels:
                    result = asdict(run_level(servers[name][1], c, args.max_tokens))
                    runs[name].append({"round": round_no, **result})
                    print(name, json.dumps(result), flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    report = summarise(runs, levels)
    RESULTS.parent.mkdir(exist_ok=True)
    settings = {**vars(args), "cpu_count": os.cpu_count()}
    RESULTS.write_text(json.dumps({"settings": settings, "summary": report, "runs": runs}, indent=2))
    print_table(report)


def summarise(runs: dict[str, list[dict]], levels: list[int]) -> list[dict]:
    rows = []
    for c in levels:
        row: dict = {"concurrency": c}
        for name, results in runs.items():
            at = [r for r in results if r["concurrency"] == c]
            row[name] = {
                "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in at),
                "ttft_p50_s_median": statistics.median(r["ttft_p50_s"] for r in at),
                "cut_short": sum(r["cut_short"] for r in at),
            }
        row["ratio"] = round(row["hychat"]["tokens_per_s_median"] / row["llama-server"]["tokens_per_s_median"], 3)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| streams | hychat tok/s | llama-server tok/s | ratio | TTFT p50 hychat / llama-server | cut short |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        h, n = r["hychat"], r["llama-server"]
        speeds = f"{h['tokens_per_s_median']:.1f} | {n['tokens_per_s_median']:.1f} | {r['ratio']:.2f}"
        ttft = f"{h['ttft_p50_s_median']:.2f} s / {n['ttft_p50_s_median']:.2f} s"
        print(f"| {r['concurrency']} | {speeds} | {ttft} | {h['cut_short']} / {n['cut_short']} |")


if __name__ == "__main__":
    main()
