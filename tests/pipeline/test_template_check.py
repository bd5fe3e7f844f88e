"""`check_template`, `hychat convert --verify` and `hychat compare --hf-model` on a tiny random
checkpoint in Hunyuan-7B-Instruct's exact tokenizer layout with its real chat template, converted by
the product's own pipeline (tests/torch_models.py builds both once per session)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.chat.format import ChatFormat
from app.modelfiles.gguf import read_gguf
from app.pipeline.template_check import CONVERSATIONS, check_template, describe, first_difference, hf_prompt_ids
from tests.conftest import REPO
from tests.torch_models import HUNYUAN_7B_FIRST_EXTRA, HUNYUAN_7B_IDS, HUNYUAN_7B_TEMPLATE, converted_tiny_hunyuan_7b

EOS, EXTRA_0, EXTRA_1 = HUNYUAN_7B_IDS["<|eos|>"], HUNYUAN_7B_FIRST_EXTRA, HUNYUAN_7B_FIRST_EXTRA + 1
# The first user turn's closing token, written as a different special token of the same length.
FIRST_USER_END = "{{- message['content'] + '<|extra_0|>' }}\n            {%- set ns.is_first_user = false %}"


@pytest.fixture(scope="module")
def tiny_7b(tmp_path_factory):
    return converted_tiny_hunyuan_7b(tmp_path_factory.getbasetemp() / "tiny_hunyuan_7b")


@pytest.fixture(scope="module")
def patched(tiny_7b, tmp_path_factory) -> Path:
    """The GGUF with the first user turn ending in <|extra_1|> instead of <|extra_0|>."""
    out = tmp_path_factory.mktemp("patched_template") / "patched.gguf"
    return patched_template(tiny_7b[1].path, FIRST_USER_END, FIRST_USER_END.replace("extra_0", "extra_1"), out)


def patched_template(gguf: Path, old: str, new: str, out: Path) -> Path:
    """A copy of `gguf` whose chat template has `old` replaced by `new`, a text of the same length in
    bytes, so that no offset in the file moves."""
    template = read_gguf(gguf).metadata["tokenizer.chat_template"]
    assert template.count(old) == 1 and len(old.encode()) == len(new.encode())
    data = gguf.read_bytes()
    assert data.count(template.encode()) == 1
    out.write_bytes(data.replace(template.encode(), template.replace(old, new).encode()))
    assert read_gguf(out).metadata["tokenizer.chat_template"] == template.replace(old, new)
    return out


def hychat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_gguf_ends_generation_on_eos_and_keeps_the_template(tiny_7b):
    import llama_cpp

    hf_dir, result = tiny_7b
    meta = read_gguf(result.path).metadata
    assert meta["tokenizer.ggml.eos_token_id"] == EOS  # config.json's eod_token_id
    assert meta["tokenizer.ggml.eot_token_id"] == EOS  # generation_config.json's first stop id
    assert meta["tokenizer.ggml.bos_token_id"] == HUNYUAN_7B_IDS["<|startoftext|>"]
    assert meta["tokenizer.ggml.padding_token_id"] == HUNYUAN_7B_IDS["<|pad|>"]
    assert (
        meta["tokenizer.chat_template"]
        == HUNYUAN_7B_TEMPLATE.read_text()
        == (hf_dir / "chat_template.jinja").read_text()
    )
    vocab = llama_cpp.Llama(str(result.path), vocab_only=True, verbose=False)
    assert llama_cpp.llama_vocab_is_eog(vocab._model.vocab, EOS)
    assert f"end-of-generation ids [{EOS}] are end-of-generation in the GGUF" in result.checks
    # The 7B family's second stop id has no GGUF field: said, not failed.
    assert len(result.notes) == 1 and "[127967]" in result.notes[0]


def test_every_conversation_gets_the_checkpoints_prompt(tiny_7b):
    hf_dir, result = tiny_7b
    report = check_template(result.path, hf_dir)
    assert report.ok and report.problem is None and report.skipped is None
    assert [r.name for r in report.results] == [c.name for c in CONVERSATIONS]
    assert all(r.first_difference is None and r.skipped is None and r.gguf_tokens > 0 for r in report.results)
    assert describe(report)[0].startswith("template system_and_user: the same ")


def test_a_different_template_is_reported_at_its_first_differing_token(tiny_7b, patched):
    import transformers

    hf_dir, _ = tiny_7b
    report = check_template(patched, hf_dir)
    assert not report.ok
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    fmt = ChatFormat.from_template(HUNYUAN_7B_TEMPLATE.read_text(), {})
    for r, c in zip(report.results, CONVERSATIONS, strict=True):
        assert r.first_difference == hf_prompt_ids(tokenizer, c, fmt).index(EXTRA_0), r.name
        at = r.first_difference - r.context_start
        assert r.gguf_context[at] == (EXTRA_1, "<|extra_1|>") and r.hf_context[at] == (EXTRA_0, "<|extra_0|>")
        assert r.gguf_context[:at] == r.hf_context[:at] and at == min(3, r.first_difference)
    first = report.results[0].first_difference
    assert report.problem == (
        f"the GGUF's chat prompt differs from the checkpoint's for 'system_and_user' at token {first}: "
        f"GGUF {EXTRA_1} '<|extra_1|>', checkpoint {EXTRA_0} '<|extra_0|>'"
    )
    lines = describe(report)
    assert lines[0].startswith(f"template system_and_user: DIFFERS from token {first}")
    assert f"▶ {EXTRA_1} '<|extra_1|>'" in lines[1] and f"▶ {EXTRA_0} '<|extra_0|>'" in lines[2]


def test_a_checkpoint_without_a_chat_template_is_skipped(tiny_7b, tmp_path):
    hf_dir, result = tiny_7b
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, tmp_path / name)
    report = check_template(result.path, tmp_path)
    assert report.ok and report.skipped == "the checkpoint has no chat template"
    assert describe(report) == ["chat template check skipped: the checkpoint has no chat template"]


@pytest.mark.parametrize(
    ("a", "b", "first"), [([1, 2, 3], [1, 2, 3], None), ([1, 2, 3], [1, 5, 3], 1), ([1, 2], [1, 2, 3], 2), ([], [4], 0)]
)
def test_first_difference(a, b, first):
    assert first_difference(a, b) == first == first_difference(b, a)


def test_compare_exits_non_zero_on_a_different_chat_prompt(tiny_7b, patched):
    hf_dir, _ = tiny_7b
    result = hychat("compare", "--model", str(patched), "--hf-model", str(hf_dir), "--tokens", "4")
    assert result.returncode == 1, result.stderr
    assert "top-1 agreement      100.0%" in result.stdout  # the weights are the same: only the template differs
    assert "chat prompt          template system_and_user: DIFFERS from token" in result.stdout
    assert "Error: the GGUF's chat prompt differs from the checkpoint's for 'system_and_user'" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_reports_each_conversation_the_same(tiny_7b):
    hf_dir, converted = tiny_7b
    result = hychat("compare", "--model", str(converted.path), "--hf-model", str(hf_dir), "--tokens", "4")
    assert result.returncode == 0, result.stderr
    for c in CONVERSATIONS:
        assert f"chat prompt          template {c.name}: the same " in result.stdout


def test_convert_verify_checks_the_chat_prompts(tiny_7b, tmp_path):
    hf_dir, _ = tiny_7b
    out = tmp_path / "verified.gguf"
    result = hychat("convert", str(hf_dir), "--out", str(out), "--outtype", "f16", "--vocab-pre", "hunyuan", "--verify")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "  note  generation_config.json also stops on [127967]" in result.stdout
    assert "  verify: top-1 agreement" in result.stdout
    for c in CONVERSATIONS:
        assert f"  verify: template {c.name}: the same " in result.stdout
