"""What per-request LoRA adapters cost the llama.cpp engine: the aggregate decode speed of 4 streams
with no adapter, all 4 on one adapter, 2 + 2 on two adapters taking turns in the one context (turns of
0 s, i.e. every step, 0.05, 0.1 and 0.25 s; the engine's `BatchEngine.turn_s`), and 2 + 2 in two
contexts of their own
sharing the weights (the alternative the engine does not take), with the cores split between them or
not; and, as a control, no adapter in those two contexts with the cores split. Modes alternate
within each round, so they share the machine's state.

    .venv/bin/python -m benchmarks.adapters [--model PATH] [--tokens 128] [--rounds 3] [--chart PNG]

The adapters are random, rank 16 on attention's four projections (benchmarks/random_lora.py).
Writes benchmarks/results/adapters.json; docs/BENCHMARKS.md gives the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from app.cpu import physical_cores
from app.pipeline.llama_converter import converter_dir
from app.services.llamacpp_service import LlamaCppBackend
from benchmarks.charts import horizontal_bars
from config.settings import Settings, embedded_model_path

RESULTS = Path(__file__).parent / "results" / "adapters.json"
PROMPT = "请写一首关于秋天的诗。"
A, B, NONE = ((0, 1.0),), ((1, 1.0),), ()


def random_adapters(model: str, folder: Path, rank: int = 16) -> list[str]:
    gguf_py = converter_dir(Path(Settings().cache_dir)) / "gguf-py"
    paths = []
    for seed in (1, 2):
        path = folder / f"lora-{seed}.gguf"
        script = Path(__file__).parent / "random_lora.py"
        subprocess.run([sys.executable, str(script), model, str(path), str(rank), str(seed)], check=True,
                       env={**os.environ, "PYTHONPATH": str(gguf_py)})  # fmt: skip
        paths.append(str(path))
    return paths


def aggregate_tokens_per_s(streams: list[tuple[LlamaCppBackend, tuple]], tokens: int) -> float:
    """All streams at once, each `tokens` long: their tokens over the time from the first start to the last end."""

    def one(backend: LlamaCppBackend, lora: tuple) -> None:
        backend.generate(PROMPT, max_new_tokens=tokens, temperature=0, ignore_eos=True, lora=lora)

    threads = [threading.Thread(target=one, args=stream) for stream in streams]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(streams) * tokens / (time.perf_counter() - start)


def own_context(backend: LlamaCppBackend, n_threads: int) -> LlamaCppBackend:
    """A backend on `backend`'s weights with a context and engine of its own (2 slots)."""
    m = backend._model
    twin = replace(m, n_threads=n_threads, engine=None, views={})
    twin.engine = backend._engine(twin, 2, 8, False)
    other = LlamaCppBackend()
    other._model = twin
    return other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chart", type=Path, help="a PNG of the medians (needs matplotlib)")
    args = parser.parse_args()
    cores = physical_cores()
    with tempfile.TemporaryDirectory() as folder:
        adapters = random_adapters(args.model, Path(folder))
        backend = LlamaCppBackend()
        backend.load_model(model_path=args.model, n_ctx=512, parallel=4, lora_adapters=adapters)
        engine = backend._model.engine
        split = [own_context(backend, max(cores // 2, 1)) for _ in range(2)]
        shared = [own_context(backend, cores) for _ in range(2)]
        modes = {
            "4 streams, no adapter": ([(backend, NONE)] * 4, None),
            "4 streams, one adapter": ([(backend, A)] * 4, None),
            **{
                f"2 + 2 on two adapters, turns of {t:g} s": ([(backend, A)] * 2 + [(backend, B)] * 2, t)
                for t in (0, 0.05, 0.1, 0.25)
            },
            "2 + 2, two contexts, cores split": ([(split[0], A)] * 2 + [(split[1], B)] * 2, None),
            "2 + 2, two contexts, all cores each": ([(shared[0], A)] * 2 + [(shared[1], B)] * 2, None),
            "4 streams, no adapter, two contexts, cores split": ([(split[0], NONE)] * 2 + [(split[1], NONE)] * 2, None),
        }
        aggregate_tokens_per_s(modes["4 streams, no adapter"][0], 16)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in modes}
        for round_ in range(args.rounds):
            for name, (streams, turn_s) in modes.items():
                engine.turn_s = type(engine).turn_s if turn_s is None else turn_s
                runs[name].append(aggregate_tokens_per_s(streams, args.tokens))
                print(f"round {round_ + 1}  {name}: {runs[name][-1]:.1f} tokens/s", flush=True)
    reference = statistics.median(runs["4 streams, no adapter"])
    medians = {name: statistics.median(values) for name, values in runs.items()}
    summary = {name: {"median_tokens_per_s": m, "ratio_to_no_adapter": m / reference} for name, m in medians.items()}
    settings = {"model": Path(args.model).name, "tokens_per_stream": args.tokens, "rounds": args.rounds,
                "cores": cores, "machine": platform.processor() or platform.machine(), "adapter_rank": 16,
                "engine_turn_s": type(engine).turn_s}  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "summary": summary, "runs": runs}, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    if args.chart:
        chart(summary, args.chart, f"{settings['model']}, {cores} cores, 4 streams of {args.tokens} tokens")


def chart(summary: dict[str, dict], path: Path, title: str) -> None:
    bars = {name: (s["median_tokens_per_s"], f"{s['ratio_to_no_adapter']:.2f}x") for name, s in summary.items()}
    horizontal_bars(path, bars, "aggregate tokens/s (median)", title)


if __name__ == "__main__":
    main()
