"""`hychat bench`: plan the configurations, measure each, add quality and native figures, write
the table, the JSON and the chart."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from app.bench.chart import write_chart
from app.bench.configs import REFERENCE_TYPES, BenchConfig, gguf_config, make_variants, torch_config
from app.bench.report import machine, markdown
from app.bench.runner import BenchOptions, ConfigResult, run_config
from app.pipeline.files import atomic_output


@dataclass(frozen=True)
class BenchPlan:
    ggufs: list[Path]  # measured on llama.cpp; the first one is the source of the variants
    variants_dir: Path  # where the variants are made once and kept
    out_dir: Path
    quants: list[str] = field(default_factory=list)  # variants of ggufs[0] made with the pipeline
    dtypes: list[str] = field(default_factory=list)  # PyTorch configurations
    hf_model: Path | None = None  # PyTorch's weights; default: ggufs[0], dequantized by transformers
    quality: bool = False


@dataclass(frozen=True)
class BenchOutcome:
    results: list[ConfigResult]
    table: Path
    json: Path
    chart: Path | None  # None without matplotlib (the bench extra)


def plan_configs(plan: BenchPlan, progress: Callable[[str], None]) -> list[BenchConfig]:
    variants = make_variants(plan.ggufs[0], plan.quants, plan.variants_dir, progress) if plan.quants else []
    torch_model = plan.hf_model or plan.ggufs[0]
    return [torch_config(torch_model, dtype) for dtype in plan.dtypes] + [
        gguf_config(path) for path in [*plan.ggufs, *variants]
    ]


def run_bench(
    plan: BenchPlan,
    configs: list[BenchConfig],
    options: BenchOptions,
    progress: Callable[[str], None] = lambda line: None,
    on_run: Callable[[str], None] = lambda name: None,
) -> BenchOutcome:
    results = [run_config(config, options, on_run) for config in configs]
    if plan.quality:
        progress("measuring quality against the full-precision GGUF")
        add_quality(results)
    return write_outputs(results, options, plan.out_dir)


def add_quality(results: list[ConfigResult]) -> None:
    """Perplexity, KL and top-1 of every llama.cpp configuration against the F32/BF16/F16 one."""
    from app.pipeline.quality import compare_quality

    ggufs = [r for r in results if r.ok and r.config.backend == "llamacpp"]
    reference = next((r for t in REFERENCE_TYPES for r in ggufs if r.config.weights == t), None)
    for r in ggufs:
        if reference is None:
            r.extra["quality"] = "no F32/BF16/F16 GGUF to compare with"
        elif r is reference:
            r.extra["quality"] = "reference"
        else:
            r.extra["quality"] = asdict(compare_quality(Path(r.config.model), Path(reference.config.model)))


def write_outputs(results: list[ConfigResult], options: BenchOptions, out_dir: Path) -> BenchOutcome:
    host = machine(options.threads)
    paths = BenchOutcome(results, out_dir / "bench.md", out_dir / "bench.json", out_dir / "bench.png")
    raw = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": host,
        "options": asdict(options),
        "results": [r.to_json() for r in results],
    }
    # Each file appears whole or not at all.
    with atomic_output(paths.table, force=True) as partial:
        partial.write_text(markdown(results, options, host))
    with atomic_output(paths.json, force=True) as partial:
        partial.write_text(json.dumps(raw, indent=2, ensure_ascii=False))
    if importlib.util.find_spec("matplotlib") is None:
        return replace(paths, chart=None)
    with atomic_output(paths.chart, force=True) as partial:
        title = f"{host['cpu']}, {options.threads} threads, {options.tokens} tokens per run"
        write_chart(results, partial, title)
    return paths
