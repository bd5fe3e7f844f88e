"""`hychat build` on real weights: SmolLM2 from the embedded GGUF, saved by transformers as a
Hugging Face checkpoint (`smol_checkpoint` in conftest.py), through convert, quantize, quality
and the load check. Interrupted and starved runs are in test_faults.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def hychat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_build_makes_checked_quantized_files_with_a_manifest(smol_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = hychat("build", "--base", str(smol_checkpoint), "--quant", "q4_0,q8_0", "--out-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and ".gguf" in line]
    assert [row.split("|")[2].strip() for row in rows] == ["f16", "q4_0", "q8_0"]
    assert all("| True |" in row for row in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    files = {f["type"]: f for f in manifest["files"]}
    assert manifest["base"] == str(smol_checkpoint) and set(files) == {"f16", "q4_0", "q8_0"}
    # SmolLM2 is English-only: on the Chinese half of the sample its next-token guesses are near ties,
    # so top-1 flips more than on English text; KL shows the quantization error directly.
    assert files["q8_0"]["quality"]["top1_agreement"] >= 0.9 and files["q8_0"]["quality"]["mean_kl"] < 0.05
    assert files["q4_0"]["quality"]["mean_kl"] > files["q8_0"]["quality"]["mean_kl"]
    assert files["f16"]["bits_per_weight"] > files["q8_0"]["bits_per_weight"] > files["q4_0"]["bits_per_weight"]
    for f in files.values():
        assert Path(f["path"]).is_file() and len(f["sha256"]) == 64
