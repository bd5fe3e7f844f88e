"""What a quantized KV cache costs and gives: for f16, q8_0 and q4_0 (K and V alike), the perplexity
of a text (README.md and docs/architecture.md, English and Chinese) with llama.cpp's context set up as
the engine's (flash attention on, batches of 512), the aggregate decode speed of 4 streams through
the product's backend, and how many KV cells (parallel × n_ctx) fit a fixed memory budget.

    .venv/bin/python benchmarks/kv_cache.py [--model PATH] [--budget-mib 1024] [--rounds 3] [--chart PNG]

Perplexity is scored on chunks of 512 tokens (every position after the first of each chunk), as
llama.cpp's llama-perplexity does with its --ppl-stride off. Writes benchmarks/results/kv_cache.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import threading
import time
from pathlib import Path

import llama_cpp
import numpy as np

from app.cpu import physical_cores
from app.modelfiles.gguf import read_gguf
from app.modelfiles.library import kv_bytes_per_token
from app.modelfiles.presets import cache_type_keywords
from app.services.llamacpp_service import LlamaCppBackend
from config.settings import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "kv_cache.json"
REPO = Path(__file__).resolve().parent.parent
TEXTS = [REPO / "README.md", REPO / "docs" / "architecture.md"]
TYPES = ("f16", "q8_0", "q4_0")
CHUNK = 512
PROMPT = "请写一首关于秋天的诗。"


def perplexity(model: str, kv_type: str, threads: int, max_chunks: int) -> float:
    types = cache_type_keywords(kv_type, kv_type)
    llm = llama_cpp.Llama(model_path=model, n_ctx=CHUNK, n_batch=CHUNK, n_ubatch=CHUNK, n_threads=threads,
                          flash_attn=True, logits_all=True, verbose=False, **types)  # fmt: skip
    text = "\n\n".join(path.read_text(encoding="utf-8") for path in TEXTS)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False)
    nll, count = 0.0, 0
    for start in range(0, min(len(ids) - CHUNK, max_chunks * CHUNK), CHUNK):
        chunk = ids[start : start + CHUNK]
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:CHUNK], dtype=np.float64)  # [T, V]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        nll -= float(sum(log_probs[i, chunk[i + 1]] for i in range(CHUNK - 1)))
        count += CHUNK - 1
    llm.close()
    return math.exp(nll / count)


def decode_tokens_per_s(backend: LlamaCppBackend, tokens: int = 128) -> float:
    def one() -> None:
        backend.generate(PROMPT, max_new_tokens=tokens, temperature=0, ignore_eos=True)

    threads = [threading.Thread(target=one) for _ in range(4)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 4 * tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--budget-mib", type=int, default=1024, help="memory for the KV cache")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=16, help="perplexity chunks of 512 tokens at most")
    parser.add_argument("--chart", type=Path, help="a PNG of the figures (needs matplotlib)")
    args = parser.parse_args()
    threads = physical_cores()
    header = read_gguf(args.model)
    results: dict[str, dict] = {}
    backends = {}
    for kv_type in TYPES:
        per_token = kv_bytes_per_token(header, **cache_type_keywords(kv_type, kv_type))
        assert per_token is not None
        results[kv_type] = {
            "bytes_per_token": per_token,
            "cells_in_budget": args.budget_mib * 2**20 // per_token,
            "perplexity": perplexity(args.model, kv_type, threads, args.chunks),
            "decode_runs": [],
        }
        print(kv_type, results[kv_type], flush=True)
        backend = LlamaCppBackend()
        backend.load_model(model_path=args.model, n_ctx=1024, parallel=4, n_threads=threads,
                           **cache_type_keywords(kv_type, kv_type))  # fmt: skip
        backends[kv_type] = backend
    for round_ in range(args.rounds):  # the types alternate in each round: they share the machine's state
        for kv_type, backend in backends.items():
            results[kv_type]["decode_runs"].append(decode_tokens_per_s(backend))
            print(f"round {round_ + 1}  {kv_type}: {results[kv_type]['decode_runs'][-1]:.1f} tokens/s", flush=True)
    for result in results.values():
        result["decode_tokens_per_s"] = statistics.median(result["decode_runs"])
    f16 = results["f16"]
    for result in results.values():
        result["perplexity_vs_f16"] = result["perplexity"] / f16["perplexity"]
        result["cells_vs_f16"] = result["cells_in_budget"] / f16["cells_in_budget"]
        result["decode_vs_f16"] = result["decode_tokens_per_s"] / f16["decode_tokens_per_s"]
    settings = {"model": Path(args.model).name, "threads": threads, "budget_mib": args.budget_mib,
                "rounds": args.rounds, "texts": [str(p.relative_to(REPO)) for p in TEXTS], "chunk": CHUNK}  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    if args.chart:
        chart(results, args.chart, f"{settings['model']}: KV cache types against f16")


def chart(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    measures = [("cells_vs_f16", "KV cells in the budget"), ("decode_vs_f16", "decode tokens/s (4 streams)"),
                ("perplexity_vs_f16", "perplexity (lower is better)")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, (key, label) in zip(axes, measures, strict=True):
        values = [results[t][key] for t in results]
        bars = ax.bar(list(results), values, color=["#4c72b0", "#55a868", "#c44e52"])
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}x", ha="center", va="bottom")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(0, max(values) * 1.2)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


if __name__ == "__main__":
    main()
