"""A change's effect on llama.cpp speed: `hychat bench` on one GGUF, run alternately from two
checkouts (each may bring its own llama-cpp-python build), and the after/before ratio of the medians.

    .venv/bin/python benchmarks/before_after.py BEFORE_DIR AFTER_DIR --gguf model.q4_0.gguf \
        [--before-pythonpath DIR] [--after-pythonpath DIR] [--rounds 5] [--out results.json] [--chart ratios.png]

BEFORE_DIR and AFTER_DIR are source trees (a `git worktree` of the old commit, this one); a
`--*-pythonpath` folder holding an unpacked llama-cpp-python wheel makes that side import it. Rounds
alternate so that drifting clocks and neighbours hit both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

METRICS = ("prompt_tokens_per_s", "decode_tokens_per_s")


def bench_once(tree: Path, pythonpath: str | None, gguf: str, reps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath or ""}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "app", "bench", "--gguf", gguf, "--quants", "", "--dtypes", "",
                   "--reps", str(reps), "--out-dir", out]  # fmt: skip
        subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True, text=True)
        report = json.loads((Path(out) / "bench.json").read_text())
    summary = report["results"][0]["summary"]
    return {
        "system_info": report["machine"]["llama_cpp_system_info"],
        **{metric: summary[metric]["median"] for metric in METRICS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--before-pythonpath")
    parser.add_argument("--after-pythonpath")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--chart", type=Path, help="PNG of each round's after/before ratio (needs matplotlib)")
    args = parser.parse_args()
    sides = {"before": (args.before, args.before_pythonpath), "after": (args.after, args.after_pythonpath)}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for side in order:
            runs[side].append(bench_once(*sides[side], args.gguf, args.reps))
            print(f"round {round_ + 1} {side}: " + ", ".join(f"{m} {runs[side][-1][m]:.1f}" for m in METRICS))
    medians = {side: {m: statistics.median(r[m] for r in runs[side]) for m in METRICS} for side in runs}
    ratios = {m: round(medians["after"][m] / medians["before"][m], 3) for m in METRICS}
    # The two runs of one round share the machine's state: their ratio is the steadier figure.
    paired = {m: sorted(a[m] / b[m] for a, b in zip(runs["after"], runs["before"], strict=True)) for m in METRICS}
    per_round = {m: {"median": round(statistics.median(r), 3), "low": round(r[0], 3), "high": round(r[-1], 3)}
                 for m, r in paired.items()}  # fmt: skip
    summary = {"medians": medians, "ratios": ratios, "per_round_ratios": per_round}
    result = {"gguf": Path(args.gguf).name, "rounds": args.rounds, "runs": runs, **summary}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.chart:
        chart(runs, args.chart, f"{Path(args.gguf).name}: after / before, each round's pair")


def chart(runs: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, metric in zip((-0.1, 0.1), METRICS, strict=True):
        ratios = [a[metric] / b[metric] for a, b in zip(runs["after"], runs["before"], strict=True)]
        ax.plot([i + 1 + offset for i in range(len(ratios))], ratios, "o", label=metric.replace("_", " "))
    ax.axhline(1.0, color="gray", linewidth=1)
    ax.set_xlabel("round")
    ax.set_ylabel("after / before")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
