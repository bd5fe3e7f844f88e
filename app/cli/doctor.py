"""`hychat doctor`: why is it not faster? One line per finding, and what to do about it."""

from __future__ import annotations

import click

from config.settings import Settings, embedded_model_path


@click.command()
@click.option("--model", type=click.Path(), help="GGUF file (default: the configured or embedded model).")
@click.option("--threads", type=int, help="Threads to check and probe with (default: configured or physical cores).")
@click.option("--probe-seconds", type=float, default=5.0, show_default=True, help="Decode probe length; 0 skips it.")
def doctor(model: str | None, threads: int | None, probe_seconds: float) -> None:
    """Check the llama.cpp build, threads, model, memory and CPU load; exit 1 when a check fails."""
    from app.bench.doctor import KvCache, diagnose
    from app.cpu import physical_cores

    settings = Settings()
    model = model or settings.llamacpp_model_path or embedded_model_path()
    if model is None:
        raise click.ClickException("no model: pass --model FILE.gguf or set HYCHAT_LLAMACPP_MODEL_PATH")
    threads = threads or settings.llamacpp_n_threads or physical_cores()
    click.echo(f"model {model}, {threads} threads")
    kv = KvCache(settings.llamacpp_n_ctx, settings.parallel, settings.cache_type_k, settings.cache_type_v)
    findings = diagnose(model, threads, probe_s=probe_seconds, n_gpu_layers=settings.llamacpp_n_gpu_layers,
                        allow_amx=settings.llamacpp_allow_amx, kv=kv)  # fmt: skip
    for finding in findings:
        click.echo(f"{finding.status:<6}{finding.check:<13}{finding.detail}")
        if finding.advice:
            click.echo(f"      → {finding.advice}")
    if any(f.status == "fail" for f in findings):
        raise SystemExit(1)


COMMANDS = [doctor]
