"""What a decode step of n tokens of one sequence costs against a step of one, and whether its logits
are the same bits as one-token steps give: the figures behind speculative decoding's step costs, the
engine's cap of 63 tokens a drafting step (app/engine/batch.py, docs/BENCHMARKS.md), and the most
any draft can gain here (a draft accepted whole: n tokens for a step of n).

    .venv/bin/python -m benchmarks.decode_steps

llama.cpp directly (flash attention on, as the engine loads models), the embedded model, all cores.
Prints JSON, after a prompt of 40 tokens (within a slot's first 256 cells), of 300 and of 800: seconds
and the ratio to one token by step size, and the best speed-up a whole draft gives (the most n x one
token's cost over a step of n); the largest logit difference from one-token steps by step size.
Also written to benchmarks/results/decode_steps.json, or to the path given as its one argument.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

from config.settings import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "decode_steps.json"
SIZES = (1, 2, 9, 17, 63, 64, 128)
TEXT = "请把下面的诗原样抄写三遍。床前明月光，疑是地上霜。举头望明月，低头思故乡。"


def main() -> None:
    llm = llama_cpp.Llama(
        model_path=str(embedded_model_path()), n_ctx=1024, n_batch=1024, n_ubatch=1024, n_threads=os.cpu_count(),
        flash_attn=True, logits_all=True, verbose=False,
    )  # fmt: skip
    tokens = (llm.tokenize(TEXT.encode(), add_bos=True) * 40)[:1000]
    costs = {f"after {prompt} tokens": _costs(llm, tokens, prompt) for prompt in (40, 300, 800)}
    report = json.dumps({
        "step_seconds": costs,
        "vs_one_token": {after: {n: round(c[n] / c[1], 2) for n in SIZES} for after, c in costs.items()},
        "whole_draft_speedup": {after: round(max(n * c[1] / c[n] for n in SIZES), 2) for after, c in costs.items()},
        "max_logit_difference": {
            f"after {prompt} tokens": {k: _difference(llm, tokens, prompt, k) for k in (2, 32, 63, 64)}
            for prompt in (40, 300)
        },
    }, indent=2)  # fmt: skip
    print(report)
    Path(sys.argv[1] if len(sys.argv) > 1 else RESULTS).write_text(report + "\n")


def _decode(llm, tokens: list[int], pos: int, n: int) -> list[np.ndarray]:
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        batch.n_tokens = n
        for i in range(n):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tokens[pos + i], pos + i, 1, 1
            batch.seq_id[i][0] = 0
        assert llama_cpp.llama_decode(llm._ctx.ctx, batch) == 0
        rows = (llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i) for i in range(n))
        return [np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).copy() for row in rows]
    finally:
        llama_cpp.llama_batch_free(batch)


def _run(llm, tokens: list[int], steps: list[int]) -> list[np.ndarray]:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)
    logits, pos = [], 0
    for n in steps:
        logits += _decode(llm, tokens, pos, n)
        pos += n
    return logits


def _costs(llm, tokens: list[int], prompt: int = 40, rounds: int = 5) -> dict[int, float]:
    """The median seconds of a step of each size, after `prompt` tokens of the sequence."""
    seconds: dict[int, list[float]] = {n: [] for n in SIZES}
    for _ in range(rounds):
        for n in SIZES:
            _run(llm, tokens, [prompt])
            start = time.perf_counter()
            _decode(llm, tokens, prompt, n)
            seconds[n].append(time.perf_counter() - start)
    return {n: sorted(s)[len(s) // 2] for n, s in seconds.items()}


def _difference(llm, tokens: list[int], prompt: int, k: int, answer: int = 128) -> float:
    """The largest logit difference between steps of `k` tokens and one-token steps, after `prompt`."""
    ones = _run(llm, tokens, [prompt] + [1] * answer)
    steps, left = [prompt], answer
    while left:
        steps.append(min(k, left))
        left -= steps[-1]
    batched = _run(llm, tokens, steps)
    return float(max(np.abs(a - b).max() for a, b in zip(ones[prompt:], batched[prompt:], strict=True)))


if __name__ == "__main__":
    main()
