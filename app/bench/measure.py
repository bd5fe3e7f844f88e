"""One benchmark configuration, measured in a fresh process so its memory figures are its own.

    python -m app.bench.measure JOB_JSON

The parent passes the wall-clock time at which it started this process; every line printed is a
JSON event for it: `loaded`, one `run` per generation, then `done` (or `error`).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.errors import HychatError
from app.services.backend import Backend
from app.types import GenerationRequest, SamplingParams

SHORT_QUESTION = "请用中文介绍一下长城。"
# Repeated to make the long prompt: bilingual, and short, so the length lands near the one asked for.
LONG_UNIT = "长城是中国古代的军事防御工程。The Great Wall is a series of old forts. "


@dataclass(frozen=True)
class Job:
    backend: str
    model: str
    weights: str  # PyTorch dtype; ignored for llama.cpp (the GGUF decides)
    threads: int
    tokens: int
    prompt_tokens: int  # length of the long prompt; 0: only the short chat prompt
    reps: int
    n_ctx: int
    spawned_at: float  # time.time() when the parent started this process
    llama_bench: str | None = None  # llama.cpp's llama-bench, run after each of our runs (llama.cpp only)


def main() -> None:
    job = Job(**json.loads(sys.argv[1]))
    try:
        measure(job)
    except HychatError as error:
        emit("error", message=str(error))
        sys.exit(1)


def measure(job: Job) -> None:
    backend = load(job)
    emit("loaded", load_s=time.time() - job.spawned_at, rss_mb=_peak_rss_mb())
    prompts = {"short": _chat_request}
    if job.prompt_tokens:
        unit_tokens = len(backend.tokenize(LONG_UNIT, add_special=False))
        prompts["long"] = lambda tag, params: _long_request(tag, params, max(1, round(job.prompt_tokens / unit_tokens)))
    params = SamplingParams(max_new_tokens=job.tokens, temperature=0, ignore_eos=True)
    for kind, make_request in prompts.items():
        for rep in range(job.reps + 1):  # rep 0 warms up
            run = _generate(backend, make_request(uuid.uuid4().hex[:8], params))
            if rep and job.llama_bench and job.backend == "llamacpp":
                run |= _native(job, kind, run)
            emit("run", prompt=kind, rep=rep, warmup=rep == 0, **run)
    emit("done", peak_rss_mb=_peak_rss_mb())


def load(job: Job) -> Backend:
    if job.backend == "llamacpp":
        from app.services.llamacpp_service import llamacpp_service as backend

        backend.load_model(model_path=job.model, n_ctx=job.n_ctx, n_threads=job.threads, parallel=1)
    else:
        from app.services.model_service import model_service as backend

        backend.load_model(model_path=job.model, n_ctx=job.n_ctx, n_threads=job.threads, dtype=job.weights)
    return backend


def _chat_request(tag: str, params: SamplingParams) -> GenerationRequest:
    # A fresh tag in every prompt: the engine's prefix cache must not shorten a measured prompt.
    messages = [{"role": "system", "content": f"Run {tag}."}, {"role": "user", "content": SHORT_QUESTION}]
    return GenerationRequest(messages=messages, params=params)


def _long_request(tag: str, params: SamplingParams, repeat: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"[{tag}] " + LONG_UNIT * repeat, params=params)


def _generate(backend: Backend, request: GenerationRequest) -> dict[str, Any]:
    *_, last = backend.start(request)
    u = last.usage
    new_prompt = u.prompt_tokens - u.cached_tokens
    return {
        "prompt_tokens": u.prompt_tokens,
        "cached_tokens": u.cached_tokens,
        "completion_tokens": u.completion_tokens,
        "ttft_ms": u.ttft_ms,
        # The first token's wait is prompt processing plus one sampling step: close enough to name it so.
        "prompt_tokens_per_s": new_prompt / (u.ttft_ms / 1000) if u.ttft_ms > 0 else 0.0,
        "decode_tokens_per_s": u.decode_tokens_per_s,
    }


def _native(job: Job, kind: str, run: dict[str, Any]) -> dict[str, Any]:
    """llama-bench's figure for the same work, and ours as a ratio to it."""
    from app.bench.llama_bench import native_tokens_per_s

    ours = run["prompt_tokens_per_s"] if kind == "long" else run["decode_tokens_per_s"]
    try:
        native = native_tokens_per_s(job.llama_bench, job.model, job.threads, kind, run["prompt_tokens"], job.tokens)
    except RuntimeError as error:
        return {"native_error": str(error)}
    return {"native_tokens_per_s": native, "native_ratio": ours / native}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


if __name__ == "__main__":
    main()
