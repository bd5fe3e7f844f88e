"""`hychat bench`: the backends compared on this machine; `hychat bench serve URL`: a server under load."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

from app.errors import HychatError
from config.settings import Settings, embedded_model_path


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(invoke_without_command=True)
@click.option("--gguf", "ggufs", multiple=True, type=click.Path(), help="GGUF to measure (repeat; default: embedded).")
@click.option("--quants", default="f16,q8_0,q5_0,q4_0,q4_k_m", show_default=True,
              help="Formats made from the first GGUF by the pipeline and measured too ('' for none).")  # fmt: skip
@click.option("--hf-model", type=click.Path(), help="PyTorch's weights (default: the first GGUF, dequantized).")
@click.option("--dtypes", help="PyTorch configurations (default float32,bfloat16 when torch is installed; '' none).")
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--tokens", type=int, default=128, show_default=True, help="Tokens generated per run.")
@click.option("--prompt-tokens", type=int, default=512, show_default=True, help="Length of the long prompt.")
@click.option("--reps", type=int, default=3, show_default=True, help="Measured runs per prompt, after a warm-up.")
@click.option("--out-dir", type=click.Path(), default="bench-results", show_default=True)
@click.option("--quality", is_flag=True, help="Add perplexity / KL / top-1 against the F16 (or F32) GGUF.")
@click.option("--llama-bench", type=click.Path(), help="llama.cpp's llama-bench binary: report our ratio to it.")
@click.pass_context
def bench(ctx: click.Context, ggufs: tuple[str, ...], quants: str, hf_model: str | None, dtypes: str | None,
          threads: int | None, tokens: int, prompt_tokens: int, reps: int, out_dir: str, quality: bool,
          llama_bench: str | None) -> None:  # fmt: skip
    """Measure load time, first-token time, prompt and decode speed and peak memory of PyTorch and
    llama.cpp configurations, each in a fresh process; write bench.md, bench.json and bench.png."""
    if ctx.invoked_subcommand:
        return
    from tqdm import tqdm

    from app.bench.runner import BenchOptions, steps_per_config
    from app.bench.suite import BenchPlan, plan_configs, run_bench
    from app.cpu import physical_cores

    if tokens < 2 or reps < 1 or prompt_tokens < 0:
        raise click.BadParameter("--tokens must be >= 2, --reps >= 1 and --prompt-tokens >= 0")
    ggufs = ggufs or tuple(p for p in [embedded_model_path()] if p)
    if not ggufs:
        raise click.ClickException("no --gguf given and the embedded model is not installed")
    if dtypes is None:
        dtypes = "float32,bfloat16" if importlib.util.find_spec("torch") else ""
        if not dtypes:
            click.echo("PyTorch is not installed (the torch extra): measuring llama.cpp only.", err=True)
    settings = Settings()
    plan = BenchPlan(
        ggufs=[Path(g) for g in ggufs], variants_dir=Path(settings.cache_dir) / "bench", out_dir=Path(out_dir),
        quants=_csv(quants), dtypes=_csv(dtypes), hf_model=Path(hf_model) if hf_model else None,
        quality=quality,
    )  # fmt: skip
    options = BenchOptions(threads or settings.llamacpp_n_threads or physical_cores(), tokens, prompt_tokens, reps,
                           settings.llamacpp_n_ctx, llama_bench=llama_bench)  # fmt: skip
    try:
        configs = plan_configs(plan, _say)
        with tqdm(total=len(configs) * steps_per_config(options), unit="step", file=sys.stderr) as bar:

            def on_run(name: str) -> None:
                bar.set_description(name)
                bar.update()

            outcome = run_bench(plan, configs, options, _say, on_run)
    except HychatError as error:
        raise click.ClickException(str(error)) from None
    click.echo(outcome.table.read_text())
    click.echo(f"wrote {outcome.table}, {outcome.json}" + (f" and {outcome.chart}" if outcome.chart else ""))
    if outcome.chart is None:
        click.echo("no chart: it needs matplotlib (pip install 'hychat[bench]')", err=True)
    failed = [r.config.name for r in outcome.results if not r.ok]
    if failed:
        click.echo(f"failed: {', '.join(failed)}", err=True)


def _say(line: str) -> None:
    click.echo(f"==> {line}", err=True)


@bench.command()
@click.argument("url")
@click.option("--levels", default="1,2,4,8", show_default=True, help="Concurrent streams, comma-separated.")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--rounds", type=int, default=1, show_default=True)
@click.option("--api-key", default="none", help="Sent as a Bearer token.")
def serve(url: str, levels: str, max_tokens: int, rounds: int, api_key: str) -> None:
    """Concurrent streaming chats against any OpenAI-compatible server at URL (http://host:port):
    aggregate tokens/s, time-to-first-token percentiles, answers cut short."""
    from app.bench.loadgen import run_levels

    click.echo("| streams | tokens/s | TTFT p50 (s) | TTFT p95 (s) | cut short | errors |")
    click.echo("|---|---|---|---|---|---|")
    try:
        results = list(run_levels(url, [int(x) for x in _csv(levels)], max_tokens, rounds, api_key))
    except ConnectionError as error:
        raise click.ClickException(str(error)) from None
    for r in results:
        click.echo(
            f"| {r.concurrency} | {r.tokens_per_s:.1f} | {r.ttft_p50_s:.2f} | {r.ttft_p95_s:.2f} "
            f"| {r.cut_short} | {r.errors} |"
        )


@bench.command()
@click.argument("url")
@click.option("--duration", type=float, default=120, show_default=True, help="Seconds of traffic after the warm-up.")
@click.option("--clients", type=int, default=4, show_default=True, help="Clients sending at once.")
@click.option("--max-tokens", type=int, default=32, show_default=True)
@click.option("--max-rss-growth", type=float, default=0.05, show_default=True, help="Allowed memory growth (0.05: 5%).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--api-key", default="none", help="Sent as a Bearer token.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the report here.")
def soak(url: str, duration: float, clients: int, max_tokens: int, max_rss_growth: float, seed: int, api_key: str,
         json_path: str | None) -> None:  # fmt: skip
    """Mixed traffic against the server at URL for --duration seconds (chat, streams, completions, JSON
    schema, abandoned streams); exit 1 on any error, memory growth above the limit or a stuck slot."""
    import json

    from tqdm import tqdm

    from app.bench.soak import soak as run_soak
    from app.pipeline.files import atomic_output

    if duration <= 0 or clients < 1 or max_tokens < 1:
        raise click.BadParameter("--duration must be > 0, --clients and --max-tokens >= 1")
    with tqdm(total=round(duration), unit="s", file=sys.stderr) as bar:

        def tick(elapsed_s: float, served: int) -> None:
            bar.n = min(round(elapsed_s), bar.total)
            bar.set_postfix(requests=served)

        try:
            report = run_soak(url, duration, clients, max_tokens, api_key, seed, max_rss_growth, tick)
        except ConnectionError as error:
            raise click.ClickException(str(error)) from None
    for line in _soak_lines(report):
        click.echo(line)
    if json_path:
        with atomic_output(Path(json_path), force=True) as temporary:
            temporary.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    if report.problems:
        raise click.ClickException("; ".join(report.problems))


@bench.command()
@click.option("--gguf", type=click.Path(), help="GGUF to run (default: the embedded model).")
@click.option("--rounds", type=int, default=5, show_default=True, help="Pairs of runs, parsing off and on.")
@click.option("--threads", type=int, help="CPU threads (default: physical cores).")
@click.option("--json", "json_path", type=click.Path(), help="Also write the report here.")
def parsing(gguf: str | None, rounds: int, threads: int | None, json_path: str | None) -> None:
    """Streamed decode rate with chat output parsing (reasoning apart, tool calls) against the rate
    without it: the same greedy generation, alternated in this process."""
    import json

    from tqdm import tqdm

    from app.bench.parsing import measure
    from app.pipeline.files import atomic_output
    from app.services.llamacpp_service import llamacpp_service

    if rounds < 1:
        raise click.BadParameter("--rounds must be >= 1")
    path = gguf or embedded_model_path()
    if not path:
        raise click.ClickException("no --gguf given and the embedded model is not installed")
    try:
        llamacpp_service.load_model(model_path=path, n_threads=threads)
    except HychatError as error:
        raise click.ClickException(str(error)) from None
    with tqdm(total=2 * rounds, unit="run", file=sys.stderr) as bar:
        report = measure(llamacpp_service, rounds, on_run=lambda: bar.update(1))
    click.echo(f"tokens per answer: {report.tokens}, {rounds} rounds")
    click.echo(f"parsing off: {' '.join(f'{r:.1f}' for r in report.rates_off)} tokens/s")
    click.echo(f"parsing on:  {' '.join(f'{r:.1f}' for r in report.rates_on)} tokens/s")
    click.echo(f"ratio (medians, on / off): {report.ratio:.3f}")
    if json_path:
        with atomic_output(Path(json_path), force=True) as temporary:
            temporary.write_text(json.dumps(report.to_dict(), indent=2))


def _soak_lines(report) -> list[str]:
    served = sum(report.requests.values())
    by_kind = ", ".join(f"{kind} {n}" for kind, n in report.requests.items())
    lines = [
        f"requests: {served} in {report.duration_s:.0f} s with {report.clients} clients ({by_kind})",
        f"errors: {report.errors}",
        f"latency: p50 {report.latency_p50_s:.2f} s, p95 {report.latency_p95_s:.2f} s",
        f"server memory: {report.rss_start_mib:.1f} MiB after warm-up, {report.rss_end_mib:.1f} MiB at the end "
        f"({report.rss_growth:+.1%})",
        f"after the run: {report.busy_slots_end:.0f} slots busy, {report.queued_end:.0f} queued",
    ]
    return lines + [f"  {error}" for error in report.first_errors]


COMMANDS = [bench]
