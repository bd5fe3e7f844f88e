"""How much the service costs on top of raw llama.cpp: decode tokens/s and time to first token of
(a) `llamacpp_service.generate_stream` and (b) the streamed `/api/chat` endpoint of a real server,
each as a ratio to raw `llama_cpp.Llama.generate()` on the same model, threads and context settings,
measured in interleaved rounds in one run.

    .venv/bin/python benchmarks/bench_service.py [--rounds 7] [--tokens 128] [--model PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import llama_cpp
from httpx_sse import connect_sse
from tqdm import tqdm

from app.cpu import physical_cores
from app.services.llamacpp_service import llamacpp_service
from config.settings import embedded_model_path

REPO = Path(__file__).resolve().parent.parent

# Counting never reaches an end-of-text token within a few hundred tokens, so every run decodes
# exactly --tokens tokens. Each round opens with its own number so no prompt cache helps.
PROMPT = "Round {round}. Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def raw_llama(llm: llama_cpp.Llama, prompt: str, n_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    times = []
    for _ in llm.generate(tokens, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        times.append(time.perf_counter())
        if len(times) == n_tokens:
            break
    return _rates(start, times, n_tokens)


def service_stream(prompt: str, n_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    times = [
        time.perf_counter() for _ in llamacpp_service.generate_stream(prompt, max_new_tokens=n_tokens, temperature=0)
    ]
    return _rates(start, times, n_tokens)


def http_stream(client: httpx.Client, prompt: str, n_tokens: int) -> tuple[float, float]:
    body = {"prompt": prompt, "max_new_tokens": n_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    times, done = [], None
    with connect_sse(client, "POST", "/api/chat", json=body) as source:
        for event in source.iter_sse():
            if event.event == "done":
                done = json.loads(event.data)
            else:
                times.append(time.perf_counter())
    assert done and done["usage"]["completion_tokens"] == n_tokens, done
    return _rates(start, times, n_tokens)


def _rates(start: float, times: list[float], n_tokens: int) -> tuple[float, float]:
    """(time to first token in ms, decode tokens/s after the first)."""
    if len(times) != n_tokens:
        raise RuntimeError(f"expected {n_tokens} streamed pieces, got {len(times)}")
    return (times[0] - start) * 1000, (n_tokens - 1) / (times[-1] - times[0])


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = 18765
    env = {**os.environ, "HYCHAT_LLAMACPP_MODEL_PATH": model, "HYCHAT_LLAMACPP_N_THREADS": str(threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = parser.parse_args()

    llamacpp_service.load_model(model_path=args.model, n_ctx=2048, n_threads=args.threads)
    # The reference: a plain `Llama` on the same file, threads and context size, with flash attention
    # as the service uses it. The service decodes in its engine's own context.
    llm = llama_cpp.Llama(
        args.model, n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, flash_attn=True, verbose=False
    )
    server, url = start_server(args.model, args.threads)
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "service": [], "http": []}
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            # Round 0 warms every path up and is not counted.
            for rnd in tqdm(range(args.rounds + 1), desc="rounds", unit="round"):
                prompt = PROMPT.format(round=rnd)
                llm.reset()  # no prompt cache between rounds
                raw = raw_llama(llm, prompt, args.tokens)
                measured = {
                    "raw": raw,
                    "service": service_stream(prompt, args.tokens),
                    "http": http_stream(client, prompt, args.tokens),
                }
                if rnd:
                    for name, value in measured.items():
                        runs[name].append(value)
    finally:
        server.terminate()
        server.wait()
    report(runs, args)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def report(runs: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    med = {name: (statistics.median(t for t, _ in r), statistics.median(s for _, s in r)) for name, r in runs.items()}
    labels = {
        "raw": "raw `Llama.generate()`",
        "service": "`llamacpp_service.generate_stream`",
        "http": "`POST /api/chat` (SSE)",
    }
    print(
        f"\nmodel {Path(args.model).name}, {args.threads} threads, {args.tokens} tokens, median of {args.rounds} rounds"
    )
    print(f"{cpu_model()}, llama-cpp-python {llama_cpp.__version__}\n")
    print("| path | time to first token (ms) | decode tokens/s | TTFT ratio (raw/path) | decode ratio (path/raw) |")
    print("|---|---|---|---|---|")
    ttft_raw, speed_raw = med["raw"]
    for name, (ttft, speed) in med.items():
        print(f"| {labels[name]} | {ttft:.1f} | {speed:.1f} | {ttft_raw / ttft:.2f} | {speed / speed_raw:.2f} |")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs, "median": med}, indent=2)
        )


if __name__ == "__main__":
    main()
