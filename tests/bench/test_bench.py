"""`hychat bench` end to end through its entry point: real llama.cpp and transformers in their own
processes on the embedded model, with tiny settings. No figure is compared with a time limit."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import llama_cpp
import pytest

from app.bench.chart import SIZE_PX
from app.bench.configs import gguf_config, torch_config
from app.bench.runner import BenchOptions, run_config
from tests.conftest import REPO

REPS, TOKENS = 1, 8


def hychat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def bench_run(model_path, tmp_path_factory):
    """One run: PyTorch float32, the embedded Q4_1, F16 and Q8_0 made from it, and a broken GGUF."""
    work = tmp_path_factory.mktemp("bench")
    broken = work / "broken.gguf"
    broken.write_bytes(Path(model_path).read_bytes()[:10_000_000])  # truncated
    out = work / "out"
    result = hychat(
        "bench", "--gguf", model_path, "--gguf", str(broken), "--quants", "f16,q8_0", "--dtypes", "float32",
        "--tokens", str(TOKENS), "--prompt-tokens", "48", "--reps", str(REPS), "--threads", "2",
        "--out-dir", str(out), "--quality",
        env={"HYCHAT_CACHE_DIR": str(work / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result, out, json.loads((out / "bench.json").read_text())


def by_name(raw: dict) -> dict[str, dict]:
    return {r["config"]["name"]: r for r in raw["results"]}


def test_every_configuration_is_measured_in_its_own_process(bench_run):
    _, _, raw = bench_run
    results = by_name(raw)
    assert list(results) == ["PyTorch float32", "llama.cpp Q4_1", "llama.cpp unreadable", "llama.cpp F16",
                             "llama.cpp Q8_0"]  # fmt: skip
    for name, r in results.items():
        if name == "llama.cpp unreadable":
            continue
        assert r["ok"], (name, r["error"])
        measured = [run for run in r["runs"] if not run["warmup"]]
        assert len(r["runs"]) == 2 * (REPS + 1) and len(measured) == 2 * REPS
        # ignore_eos: every run generates exactly the tokens asked for, whatever the model says.
        assert {run["completion_tokens"] for run in r["runs"]} == {TOKENS}
        for run in measured:
            assert run["decode_tokens_per_s"] > 0 and run["prompt_tokens_per_s"] > 0 and run["ttft_ms"] > 0
            # A fresh tag per prompt: the prefix cache never serves more than the template's opening.
            assert run["cached_tokens"] < 8
        long_prompt = [run["prompt_tokens"] for run in measured if run["prompt"] == "long"]
        assert all(40 <= n <= 60 for n in long_prompt), long_prompt
        assert r["load_s"] > 0
        assert r["peak_rss_mb"] > 0


def test_memory_figures_are_each_process_own(bench_run):
    _, _, raw = bench_run
    results = by_name(raw)
    torch_run, q4, f16 = results["PyTorch float32"], results["llama.cpp Q4_1"], results["llama.cpp F16"]
    # PyTorch holds the weights dequantized to float32: more than the file it read.
    assert torch_run["peak_rss_mb"] * 2**20 > torch_run["model_bytes"]
    assert torch_run["peak_rss_mb"] > q4["peak_rss_mb"]
    # Separate processes: a bigger file shows as more memory, not as what an earlier run left.
    assert f16["model_bytes"] > 2 * q4["model_bytes"]
    assert f16["peak_rss_mb"] > q4["peak_rss_mb"]


def test_a_broken_configuration_is_reported_and_the_others_still_run(bench_run):
    result, out, raw = bench_run
    broken = by_name(raw)["llama.cpp unreadable"]
    assert not broken["ok"] and broken["runs"] == []
    assert broken["error"].startswith(f"{out.parent / 'broken.gguf'}: ") and "the file has 10000000" in broken["error"]
    assert "Traceback" not in broken["error"]
    assert "failed: llama.cpp unreadable" in result.stderr
    table = (out / "bench.md").read_text()
    assert "| llama.cpp unreadable |" in table and "failed:" in table


def test_the_table_has_the_guide_shape_with_ratios_against_pytorch(bench_run):
    result, out, raw = bench_run
    table = (out / "bench.md").read_text()
    assert result.stdout.startswith(table)
    header, rule, *rows = table.splitlines()[: 2 + len(raw["results"])]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:8] == ["configuration", "file (MiB)", "load (s)", "first token (ms)",
                           "first token, ~48-token prompt (ms)", "prompt tokens/s", "decode tokens/s",
                           "peak memory (MiB)"]  # fmt: skip
    assert "decode vs PyTorch float32" in columns and "memory saved vs PyTorch float32" in columns
    assert all(len(row.strip("|").split("|")) == len(columns) for row in rows)
    q4 = next(row for row in rows if row.startswith("| llama.cpp Q4_1 |"))
    cells = dict(zip(columns, (c.strip() for c in q4.strip("|").split("|")), strict=True))
    results = by_name(raw)
    speedup = (
        results["llama.cpp Q4_1"]["summary"]["decode_tokens_per_s"]["median"]
        / (results["PyTorch float32"]["summary"]["decode_tokens_per_s"]["median"])
    )
    assert cells["decode vs PyTorch float32"] == f"{speedup:.2f}×"
    saved = 1 - results["llama.cpp Q4_1"]["peak_rss_mb"] / results["PyTorch float32"]["peak_rss_mb"]
    assert cells["memory saved vs PyTorch float32"] == f"{saved:.0%}"


def test_quality_sits_in_the_same_table(bench_run):
    _, out, raw = bench_run
    results = by_name(raw)
    assert results["llama.cpp F16"]["extra"]["quality"] == "reference"
    q8, q4 = results["llama.cpp Q8_0"]["extra"]["quality"], results["llama.cpp Q4_1"]["extra"]["quality"]
    # The F16 holds the Q4_1's own values, dequantized, and the Q8_0 rounds them finely again: both are
    # nearly the reference model (a wrong reference, or figures from the wrong file, would not be).
    for q in (q4, q8):
        assert q["top1_agreement"] > 0.9 and 0 < q["mean_kl"] < 0.05
        assert q["perplexity"] == pytest.approx(q["reference_perplexity"], rel=0.1)
    assert results["PyTorch float32"]["extra"] == {}
    row = next(r for r in (out / "bench.md").read_text().splitlines() if r.startswith("| llama.cpp Q8_0 |"))
    assert f"{q8['perplexity']:.2f}" in row and f"{q8['top1_agreement']:.1%}" in row


def test_json_describes_the_machine_and_versions(bench_run):
    _, _, raw = bench_run
    host = raw["machine"]
    assert host["threads_used"] == 2 and host["physical_cores"] >= 1 and host["cpu"]
    assert host["versions"]["llama-cpp-python"] == llama_cpp.__version__
    assert host["versions"]["torch"] and host["versions"]["transformers"]
    assert "CPU" in host["llama_cpp_system_info"]
    assert raw["options"] == {"threads": 2, "tokens": TOKENS, "prompt_tokens": 48, "reps": REPS, "n_ctx": 2048,
                              "timeout_s": 1800, "llama_bench": None}  # fmt: skip


def test_the_chart_is_a_png_of_the_expected_size(bench_run):
    from PIL import Image

    _, out, _ = bench_run
    data = (out / "bench.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == SIZE_PX
    with Image.open(out / "bench.png") as image:
        image.verify()  # raises on a damaged file


def test_a_configuration_that_hangs_is_killed_and_reported(model_path):
    # A real process killed by the runner's deadline: the failure a stuck configuration causes.
    options = BenchOptions(threads=2, tokens=TOKENS, prompt_tokens=0, reps=1, timeout_s=0.5)
    stuck = run_config(torch_config(model_path, "float32"), options, lambda name: None)
    assert not stuck.ok and stuck.error == "gave no result within 0.5 s"
    fine = run_config(gguf_config(model_path), replace(options, timeout_s=600), lambda name: None)
    assert fine.ok, fine.error


def test_a_missing_llama_bench_is_a_note_not_a_failure(model_path, tmp_path):
    result = hychat(
        "bench", "--gguf", model_path, "--quants", "", "--dtypes", "", "--tokens", "4", "--prompt-tokens", "0",
        "--reps", "1", "--out-dir", str(tmp_path), "--llama-bench", str(tmp_path / "no-such-llama-bench"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    measured = [run for run in r["runs"] if not run["warmup"]]
    assert r["ok"] and measured[0]["decode_tokens_per_s"] > 0
    assert measured[0]["native_error"].startswith("cannot run") and "No such file" in measured[0]["native_error"]
    assert "| llama.cpp Q4_1 | cannot run" in (tmp_path / "bench.md").read_text()


def test_a_llama_bench_killed_by_an_illegal_instruction_is_named_with_the_likely_cause(tmp_path):
    """A native llama-bench built with AMX kernels dies by SIGILL on an AMX Xeon (measured); a script
    that kills itself the same way stands in for it, since only such a machine can cause it."""
    from app.bench.llama_bench import native_tokens_per_s

    binary = tmp_path / "llama-bench"
    binary.write_text("#!/bin/sh\necho 'load_backend: loaded CPU backend' >&2\nkill -ILL $$\n")
    binary.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"killed by SIGILL.*AMX kernels.*every-cpu"):
        native_tokens_per_s(binary, tmp_path / "model.gguf", 2, "short", 64, 16)


# llama.cpp's own llama-bench, built from the pinned sources (../shared/tools/build-llama-tools.sh);
# the product never needs it, so this comparison runs where it has been built.
LLAMA_BENCH = Path(
    os.environ.get("HYCHAT_LLAMA_BENCH", Path.home() / f".cache/llama-tools/{llama_cpp.__version__}/bin/llama-bench")
)


@pytest.mark.skipif(not LLAMA_BENCH.is_file(), reason=f"no llama-bench at {LLAMA_BENCH} (HYCHAT_LLAMA_BENCH)")
def test_ratios_to_native_llama_bench_pair_each_run(model_path, tmp_path):
    result = hychat(
        "bench", "--gguf", model_path, "--quants", "", "--dtypes", "", "--tokens", "16", "--prompt-tokens", "64",
        "--reps", "2", "--out-dir", str(tmp_path), "--llama-bench", str(LLAMA_BENCH),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    measured = [run for run in r["runs"] if not run["warmup"]]
    assert len(measured) == 4 and all(run["native_tokens_per_s"] > 0 for run in measured)
    for run in measured:
        ours = run["decode_tokens_per_s"] if run["prompt"] == "short" else run["prompt_tokens_per_s"]
        assert run["native_ratio"] == pytest.approx(ours / run["native_tokens_per_s"])
    s = r["summary"]
    row = next(line for line in (tmp_path / "bench.md").read_text().splitlines()[3:] if "Q4_1" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    figures = [("native_prompt_tokens_per_s", 1), ("prompt_tokens_per_s", 1), ("native_prompt_ratio", 2),
               ("native_decode_tokens_per_s", 1), ("decode_tokens_per_s", 1), ("native_decode_ratio", 2)]  # fmt: skip
    assert cells[1:] == [f"{s[name]['median']:.{digits}f}" for name, digits in figures]
