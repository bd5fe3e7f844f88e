"""`hychat` model pipeline commands: inspect, quantize, convert, merge-lora, lora-to-gguf, build, compare."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from app.errors import HychatError
from config.settings import Settings

DTYPE_CHOICE = click.Choice(["auto", "bfloat16", "float16", "float32"])


@click.command()
@click.argument("path", type=click.Path())
def inspect(path: str) -> None:
    """Describe a GGUF file and check that it is whole; exit 1 when it is damaged."""
    from app.pipeline.inspect import describe, inspect_gguf

    report = inspect_gguf(path)
    click.echo("\n".join(describe(report)))
    if not report.ok:
        raise click.ClickException(f"{path}: {report.problem}")


@click.command()
@click.argument("source", type=click.Path())
@click.argument("target", type=click.Path())
@click.option("--type", "quant", required=True, help="q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k_m, q4_k_s, q4_k_m, ...")
@click.option("--imatrix", type=click.Path(), help="Importance matrix (llama-imatrix's GGUF or .dat) for this model.")
@click.option("--force", is_flag=True, help="Replace TARGET if it exists.")
@click.option("--eval", "reference", type=click.Path(), help="Reference GGUF (f16/f32): report quality against it.")
@click.option("--allow-requantize", is_flag=True, help="Accept an already quantized SOURCE (lower quality).")
def quantize(
    source: str, target: str, quant: str, imatrix: str | None, force: bool, reference: str | None,
    allow_requantize: bool,
) -> None:  # fmt: skip
    """Quantize SOURCE (a GGUF) into TARGET with llama.cpp's quantizer."""
    from app.pipeline import quantize as q

    with _spinner(f"quantizing to {quant}"):
        result = _pipeline(
            q.quantize, Path(source), Path(target), quant, force=force, imatrix=Path(imatrix) if imatrix else None,
            allow_requantize=allow_requantize,
        )  # fmt: skip
    click.echo(f"{result.path}: {result.quant}, {result.size_bytes:,} bytes")
    if result.requantized_from:
        click.echo(f"warning: requantized from {result.requantized_from}: the result carries the error of both "
                   "quantizations, lower quality than quantizing the original", err=True)  # fmt: skip
    if reference:
        from app.pipeline.quality import compare_quality

        r = _pipeline(compare_quality, result.path, Path(reference))
        click.echo(f"  against {Path(reference).name}, {r.tokens} tokens:")
        click.echo(f"  perplexity {r.perplexity:.3f} (reference {r.reference_perplexity:.3f}), mean KL {r.mean_kl:.5f}")
        click.echo(f"  top-1 agreement {r.top1_agreement:.1%}")


@click.command()
@click.argument("hf_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="GGUF file to write.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "auto"]), default="f16", show_default=True)
@click.option("--vocab-pre", help="Pre-tokenizer name, when the converter does not recognise the tokenizer.")
@click.option("--verify", is_flag=True, help="Also compare the GGUF's logits and chat prompts with the checkpoint's.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def convert(hf_dir: str, out: str, outtype: str, vocab_pre: str | None, verify: bool, force: bool) -> None:
    """Convert a Hugging Face checkpoint to GGUF with llama.cpp's own converter, then check it."""
    from app.pipeline.hf_to_gguf import convert as run

    result = _pipeline(run, Path(hf_dir), Path(out), _cache_dir(), outtype=outtype, vocab_pre=vocab_pre, force=force)
    click.echo(f"{result.path}: {result.outtype}, {result.size_bytes:,} bytes")
    for line in result.checks:
        click.echo(f"  ok  {line}")
    for line in result.notes:
        click.echo(f"  note  {line}")
    if verify:
        from app.pipeline.compare import compare_backends

        report = _pipeline(
            compare_backends, result.path, "你好，请介绍一下你自己。Hello!", hf_path=hf_dir, n_continue=16
        )
        click.echo(
            f"  verify: top-1 agreement {report.top1_agreement:.1%} over {report.positions} positions, "
            f"max |logit diff| {report.max_abs_logit_diff:.4f}"
        )
        problem = _check_template(result.path, Path(hf_dir), indent="  verify: ")
        if problem:
            raise click.ClickException(problem)


@click.command("merge-lora")
@click.option("--base", required=True, type=click.Path(), help="Base checkpoint folder.")
@click.option("--adapter", required=True, type=click.Path(), help="peft LoRA adapter folder.")
@click.option("--out", required=True, type=click.Path(), help="Folder for the merged checkpoint.")
@click.option(
    "--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto", show_default=True
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def merge_lora(base: str, adapter: str, out: str, dtype: str, force: bool) -> None:
    """Merge a LoRA adapter into its base model and save a complete checkpoint."""
    from app.pipeline.merge import merge_lora as run

    result = _pipeline(run, Path(base), Path(adapter), Path(out), dtype=dtype, force=force)
    click.echo(f"{result.path}: {result.dtype}, {result.size_bytes:,} bytes of weights")


@click.command("lora-to-gguf")
@click.option("--base", required=True, type=click.Path(), help="Base checkpoint folder.")
@click.option("--adapter", required=True, type=click.Path(), help="peft LoRA adapter folder.")
@click.option("--out", required=True, type=click.Path(), help="GGUF adapter file to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def lora_to_gguf(base: str, adapter: str, out: str, force: bool) -> None:
    """Convert a LoRA adapter to a GGUF adapter that llama.cpp applies at run time (lora_path)."""
    from app.pipeline.lora_gguf import lora_to_gguf as run

    path = _pipeline(run, Path(base), Path(adapter), Path(out), _cache_dir(), force=force)
    click.echo(f"{path}: apply it with HYCHAT_LLAMACPP_LORA_PATH={path}")


@click.command()
@click.option("--base", required=True, type=click.Path(), help="Base checkpoint folder.")
@click.option("--adapter", type=click.Path(), help="peft LoRA adapter folder to merge first.")
@click.option("--quant", default="q4_0,q5_0,q8_0", show_default=True, help="Comma-separated quantization types.")
@click.option("--out-dir", required=True, type=click.Path(), help="Folder for every output and manifest.json.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16"]), default="f16", show_default=True)
@click.option("--vocab-pre", help="Pre-tokenizer name, when the converter does not recognise the tokenizer.")
@click.option("--imatrix", type=click.Path(), help="Importance matrix for the quantizations.")
@click.option("--no-eval", is_flag=True, help="Skip the perplexity / KL / top-1 figures.")
@click.option("--force", is_flag=True, help="Replace outputs that exist.")
def build(base: str, adapter: str | None, quant: str, out_dir: str, outtype: str, vocab_pre: str | None,
          imatrix: str | None, no_eval: bool, force: bool) -> None:  # fmt: skip
    """Merge (optional), convert, quantize and check, with a summary table."""
    from app.pipeline.build import build as run

    quants = [q.strip() for q in quant.split(",") if q.strip()]
    built = _pipeline(
        run, Path(base), Path(out_dir), _cache_dir(), quants, adapter=Path(adapter) if adapter else None,
        outtype=outtype, vocab_pre=vocab_pre, imatrix=Path(imatrix) if imatrix else None, evaluate=not no_eval,
        force=force,
        progress=lambda line: click.echo(f"==> {line}", err=True),
    )  # fmt: skip
    click.echo("| file | type | size (MiB) | bits/weight | loads | perplexity | KL | top-1 |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for b in built:
        q = b.quality
        figures = f"{q.perplexity:.2f} | {q.mean_kl:.4f} | {q.top1_agreement:.1%}" if q else "reference | | "
        name = Path(b.path).name
        click.echo(f"| {name} | {b.type} | {b.size_bytes / 2**20:.1f} | {b.bits_per_weight} | {b.loads} | {figures} |")


def _check_template(gguf: Path, hf_dir: Path, indent: str) -> str | None:
    """Prints whether the GGUF gives each test conversation the checkpoint's prompt; returns the
    first difference, if any."""
    from app.pipeline.template_check import check_template, describe

    report = _pipeline(check_template, gguf, hf_dir)
    for line in describe(report):
        click.echo(f"{indent}{line}")
    return report.problem


class Interrupted(click.ClickException):
    exit_code = 130  # the shell's code for a command stopped by SIGINT


def _pipeline(step: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs a pipeline step; its errors become the command's one-line error."""
    try:
        return step(*args, **kwargs)
    except HychatError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        # The step's cleanup has run on the way here; click prints the line once progress output
        # (the spinner) has closed, instead of "Aborted!" and exit 1.
        raise Interrupted("interrupted; no partial output was left") from None


def _cache_dir() -> Path:
    return Path(Settings().cache_dir)


@contextmanager
def _spinner(label: str) -> Iterator[None]:
    """Progress for a C call that reports none: elapsed time on stderr."""
    from tqdm import tqdm

    with tqdm(desc=label, bar_format="{desc}: {elapsed}", file=sys.stderr) as bar:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()


@click.command()
@click.option("--prompt", default="请用中文介绍一下长城。The Great Wall of China is", show_default=True)
@click.option("--model", "gguf", help="GGUF file (default: the embedded SmolLM2).")
@click.option(
    "--hf-model", help="Checkpoint folder the GGUF was converted from (default: the GGUF itself); its chat prompts too."
)
@click.option("--tokens", type=int, default=64, show_default=True, help="Greedy continuation length.")
@click.option("--min-agreement", type=float, default=0.95, show_default=True, help="Exit 1 below this.")
def compare(prompt: str, gguf: str | None, hf_model: str | None, tokens: int, min_agreement: float) -> None:
    """Check that llama.cpp and PyTorch compute the same model: teacher-forced top-1 agreement and
    logit differences over the prompt and a greedy continuation. With --hf-model, also that the GGUF
    gives a set of chats the same prompt token ids as the checkpoint's own chat template."""
    from app.pipeline.compare import compare_backends
    from config.settings import embedded_model_path

    gguf = gguf or embedded_model_path()
    if gguf is None:
        raise click.ClickException("no GGUF given and the embedded model is not installed")
    report = _pipeline(compare_backends, gguf, prompt, hf_path=hf_model, n_continue=tokens)
    n_prompt, n_continued = report.prompt_tokens, report.continuation_tokens
    click.echo(f"positions compared   {report.positions} ({n_prompt} prompt + {n_continued} continuation)")
    click.echo(f"top-1 agreement      {report.top1_agreement:.1%}")
    click.echo(f"max |logit diff|     {report.max_abs_logit_diff:.4f}")
    click.echo(f"mean |logit diff|    {report.mean_abs_logit_diff:.4f}")
    click.echo(f"first disagreement   {report.first_disagreement if report.first_disagreement is not None else 'none'}")
    click.echo(f"continuation         {report.continuation!r}")
    problems = []
    if report.top1_agreement < min_agreement:
        problems.append(f"top-1 agreement {report.top1_agreement:.1%} is below {min_agreement:.0%}")
    if hf_model and Path(hf_model).is_dir():  # the checkpoint's own chat prompts against the GGUF's
        template_problem = _check_template(Path(gguf), Path(hf_model), indent="chat prompt          ")
        if template_problem:
            problems.append(template_problem)
    if problems:
        raise click.ClickException("; ".join(problems))


COMMANDS = [inspect, quantize, convert, merge_lora, lora_to_gguf, build, compare]
