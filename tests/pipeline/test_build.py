"""`hychat build` on real weights: SmolLM2 from the embedded GGUF, saved by transformers as a
Hugging Face checkpoint, through convert, quantize, quality and the load check; and a quantize
interrupted with Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def smol_checkpoint(model_path, tmp_path_factory) -> Path:
    import torch
    import transformers

    gguf = Path(model_path)
    out = tmp_path_factory.mktemp("smollm2")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a fresh model with the same weights saves fine.
    model = transformers.AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)  # the converter would take the weights for pre-quantized
    (out / "config.json").write_text(json.dumps(config))
    return out


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


def test_ctrl_c_during_quantize_leaves_no_output(smol_checkpoint, tmp_path):
    f16 = tmp_path / "smol.f16.gguf"
    assert hychat("convert", str(smol_checkpoint), "--out", str(f16)).returncode == 0
    before = f16.read_bytes()
    target = tmp_path / "smol.q4_k_m.gguf"
    command = [sys.executable, "-m", "app", "quantize", str(f16), str(target), "--type", "q4_k_m"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".quantize-*/out.gguf")) and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until llama.cpp is writing
    assert proc.poll() is None, "quantize finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smol.f16.gguf"]
    assert f16.read_bytes() == before
