"""Both backends compute the same model: teacher-forced parity on the embedded SmolLM2 weights."""

from __future__ import annotations

import subprocess
import sys

from app.pipeline.compare import compare_backends
from tests.conftest import REPO


def test_top1_agreement_between_llamacpp_and_pytorch_is_at_least_95_percent(model_path):
    report = compare_backends(model_path, "请用中文介绍一下长城。The Great Wall of China is", n_continue=64)
    assert report.positions >= 64 and report.continuation_tokens == 64
    assert report.top1_agreement >= 0.95
    # Q4_1 weights are dequantized exactly for PyTorch; llama.cpp quantizes activations to 8 bits,
    # so logits differ a little, never wildly.
    assert 0 < report.max_abs_logit_diff < 5 and report.mean_abs_logit_diff < 0.5
    assert report.continuation.strip()


def test_hychat_compare_reports_and_fails_below_the_threshold(model_path):
    args = [sys.executable, "-m", "app", "compare", "--prompt", "你好，世界。Hello", "--tokens", "8"]
    ok = subprocess.run(args + ["--min-agreement", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "top-1 agreement" in ok.stdout and "max |logit diff|" in ok.stdout
    strict = subprocess.run(args + ["--min-agreement", "1.01"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "below 101%" in strict.stderr
