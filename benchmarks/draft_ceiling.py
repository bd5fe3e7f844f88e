"""The most prompt lookup can gain on the speculative benchmark's repetitive tasks, with this model's
own answers and this CPU's step costs: what decides whether a task can reach a given speed-up.

    .venv/bin/python -m benchmarks.draft_ceiling

For each task of benchmarks/speculative.py, the embedded model's greedy answer (256 tokens at most,
through the engine as the server gives it) is replayed through the engine's own prompt lookup
(`NgramDrafter`, the request's text only, as on a request's first time) with an oracle that verifies
each step exactly the draft tokens the model will accept: no drafter can do better from the same
matches. Its time is priced with the step costs of benchmarks/results/decode_steps.json (one sequence,
after 300 tokens; sizes between those measured, linear), the plain answer's as one-token steps. Printed
as JSON, by match length n: the share of the answer's tokens that came in accepted drafts, the steps,
and the speed-up over plain decoding. Also written to benchmarks/results/draft_ceiling.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from app.engine.speculation import NgramDrafter
from app.services.llamacpp_service import LlamaCppBackend
from app.types import GenerationRequest, SamplingParams, Speculation
from benchmarks.speculative import TASKS
from config.settings import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "draft_ceiling.json"
STEPS = Path(__file__).parent / "results" / "decode_steps.json"
MOST = Speculation().n_max  # draft tokens a step, as a request asks by default


def main() -> None:
    ratios = {int(n): r for n, r in json.loads(STEPS.read_text())["vs_one_token"]["after 300 tokens"].items()}
    sizes = sorted(ratios)
    cost = lambda n: float(np.interp(n, sizes, [ratios[s] for s in sizes]))  # noqa: E731 (in one-token steps)
    backend = LlamaCppBackend()
    backend.load_model(str(embedded_model_path()), n_ctx=4096, n_threads=os.cpu_count())
    report = {}
    for task, prompt in TASKS.items():
        answer = _answer(backend, prompt)
        context = backend.tokenize(prompt, add_special=False)
        report[task] = {"answer_tokens": len(answer)} | {
            f"n={n}": _oracle(NgramDrafter(context, n), answer, cost) for n in (1, 2, 3, 4)
        }
    text = json.dumps({"step_costs": "decode_steps.json, after 300 tokens", "tasks": report}, indent=2)
    print(text)
    RESULTS.write_text(text + "\n")


def _answer(backend: LlamaCppBackend, prompt: str) -> list[int]:
    params = SamplingParams(max_new_tokens=256, temperature=0.0, speculative=Speculation(type="none"))
    events = backend.start(GenerationRequest(params, messages=[{"role": "user", "content": prompt}]))
    return [e.token_id for e in events if e.token_id is not None]


def _oracle(drafter: NgramDrafter, answer: list[int], cost) -> dict:
    """Each step verifies the longest prefix of the draft that matches the answer, then samples one."""
    done, steps, seconds, accepted = 0, 0, 0.0, 0
    while done < len(answer):
        draft, _ = drafter.draft(MOST)
        n = 0
        while n < len(draft) and done + n < len(answer) and draft[n] == answer[done + n]:
            n += 1
        new = answer[done : done + n + 1]
        drafter.extend(new)
        done, steps, seconds, accepted = done + len(new), steps + 1, seconds + cost(1 + n), accepted + n
    return {
        "accepted_share": round(accepted / len(answer), 3),
        "steps": steps,
        "speedup": round(len(answer) / seconds, 2),
    }


if __name__ == "__main__":
    main()
