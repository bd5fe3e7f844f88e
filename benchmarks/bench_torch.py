"""What the PyTorch backend adds on top of plain transformers, per dtype: decode tokens/s and time to
first token of `model_service.generate_stream` against `model.generate()` on the very same loaded
model, in interleaved rounds, plus load time (process start to model ready) and peak RSS. Each dtype
runs in a fresh process so its memory figures are its own.

    .venv/bin/python benchmarks/bench_torch.py [--model PATH] [--dtypes float32,bfloat16] [--rounds 5] [--tokens 64]
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: load time counts them

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

PROMPT = "Round {round}. Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def child(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from app.services.model_service import model_service

    model_service.load_model(model_path=args.model, dtype=args.child, n_threads=args.threads)
    load_s = time.perf_counter() - PROCESS_START
    m = model_service._model
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "service": []}
    for rnd in tqdm(range(args.rounds + 1), desc=f"{args.child} rounds", unit="round", file=sys.stderr):
        prompt = PROMPT.format(round=rnd)
        plain = plain_generate(m.model, m.tokenizer, prompt, args.tokens, torch)
        service = service_stream(model_service, prompt, args.tokens)
        if rnd:  # round 0 warms up
            runs["plain"].append(plain)
            runs["service"].append(service)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"dtype": args.child, "load_s": load_s, "peak_rss_mb": peak_rss_mb, "runs": runs}))


class _Clock:
    """A streamer that only notes when each new token arrives (generate() calls put() per token)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def plain_generate(model, tokenizer, prompt: str, n_tokens: int, torch) -> tuple[float, float]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, streamer=clock)
    return _rates(start, clock.times, n_tokens)


def service_stream(service, prompt: str, n_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    times = [time.perf_counter() for _ in service.generate_stream(prompt, max_new_tokens=n_tokens, temperature=0)]
    return _rates(start, times, n_tokens)


def _rates(start: float, times: list[float], n_tokens: int) -> tuple[float, float]:
    """(time to first token in ms, decode tokens/s after the first)."""
    if len(times) != n_tokens:
        raise RuntimeError(f"expected {n_tokens} tokens, got {len(times)}")
    return (times[0] - start) * 1000, (n_tokens - 1) / (times[-1] - times[0])


def main() -> None:
    from app.cpu import physical_cores
    from config.settings import embedded_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=embedded_model_path())
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    dtype_probe(args)
    results = []
    for dtype in args.dtypes.split(","):
        command = [sys.executable, __file__, "--child", dtype, "--model", args.model]
        command += ["--threads", str(args.threads), "--tokens", str(args.tokens), "--rounds", str(args.rounds)]
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    report(results, args)


def dtype_probe(args: argparse.Namespace) -> None:
    """What `dtype="auto"` measures, for this model's MLP and for a 7B-sized one."""
    import torch

    from app.services.model_service import mlp_shape, time_linear

    torch.set_num_threads(args.threads)
    print("| MLP shape | float32 (ms) | bfloat16 (ms) | auto picks |\n|---|---|---|---|")
    for hidden, intermediate in (mlp_shape(Path(args.model)), (4096, 14336)):
        t = time_linear(hidden, intermediate)
        f32, bf16 = t[torch.float32] * 1e3, t[torch.bfloat16] * 1e3
        print(f"| {hidden}×{intermediate} | {f32:.3f} | {bf16:.3f} | {'float32' if f32 <= bf16 else 'bfloat16'} |")


def report(results: list[dict], args: argparse.Namespace) -> None:
    setup = f"{args.threads} threads, {args.tokens} tokens, median of {args.rounds} rounds"
    print(f"\nmodel {Path(args.model).name}, {setup}\n")
    print("| dtype | path | TTFT (ms) | decode tokens/s | decode ratio (service/plain) | load (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        med = {
            k: (statistics.median(t for t, _ in v), statistics.median(s for _, s in v)) for k, v in r["runs"].items()
        }
        base = med["plain"][1]
        for path, label in (("plain", "`model.generate()`"), ("service", "`model_service.generate_stream`")):
            ttft, speed = med[path]
            print(
                f"| {r['dtype']} | {label} | {ttft:.0f} | {speed:.1f} | {speed / base:.2f} "
                f"| {r['load_s']:.1f} | {r['peak_rss_mb']:.0f} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
