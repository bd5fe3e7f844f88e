"""Why the service loads models with flash attention on: speed with and without it, and whether a
prompt's last-token logits depend on how the prompt was split into batches (a prompt-cache hit
evaluates only the uncached tail, so a split-dependent result changes answers).

    .venv/bin/python benchmarks/flash_attn.py [--model PATH] [--threads N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp
import numpy as np

from app.cpu import physical_cores
from config.settings import embedded_model_path

PROMPTS = ["从前有一座山，", "The quick brown fox jumps over the lazy dog and then " * 4]


def last_logits(llm: llama_cpp.Llama, parts: list[list[int]]) -> np.ndarray:
    llm.reset()
    for part in parts:
        llm.eval(part)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()


def split_difference(llm: llama_cpp.Llama) -> float:
    """Largest logit difference between evaluating each prompt whole and as (all but last) + last."""
    worst = 0.0
    for text in PROMPTS:
        ids = llm.tokenize(text.encode())
        worst = max(worst, float(np.abs(last_logits(llm, [ids]) - last_logits(llm, [ids[:-1], ids[-1:]])).max()))
    return worst


def speeds(llm: llama_cpp.Llama) -> tuple[float, float]:
    """(prompt tokens/s on a ~500-token prompt, decode tokens/s over 128 tokens)."""
    prompt = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 50).encode())
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - start)
    llm.reset()
    times = []
    for _ in llm.generate(llm.tokenize(b"Count: 1, 2, 3,"), temp=0):
        times.append(time.perf_counter())
        if len(times) == 128:
            break
    return pp, 127 / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = {
        fa: llama_cpp.Llama(
            args.model, n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, flash_attn=fa, verbose=False
        )
        for fa in (False, True)
    }
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
        for fa, llm in models.items():
            runs[fa].append(speeds(llm))
    print("| flash attention | prompt tokens/s | decode tokens/s | max logit change from splitting the prompt |")
    print("|---|---|---|---|")
    for fa, llm in models.items():
        pp = statistics.median(r[0] for r in runs[fa])
        tg = statistics.median(r[1] for r in runs[fa])
        print(f"| {'on' if fa else 'off'} | {pp:.0f} | {tg:.1f} | {split_difference(llm):.3g} |")


if __name__ == "__main__":
    main()
