"""The command line through its real entry points, on the embedded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect

from tests.conftest import REPO

HYCHAT = str(Path(sys.executable).parent / "hychat")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=300
    )


def test_console_script_and_module_are_the_same_program():
    script = subprocess.run([HYCHAT, "--help"], capture_output=True, text=True, timeout=300)
    module = run("--help")
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    for command in ("serve", "chat", "generate"):
        assert command in script.stdout


def test_generate_prints_the_answer(service):
    result = run("generate", "用一句话介绍北京。", "--temperature", "0", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    expected = service.chat([{"role": "user", "content": "用一句话介绍北京。"}], temperature=0, max_new_tokens=24)
    assert result.stdout == expected + "\n"


def test_generate_reports_a_bad_model_file_clearly(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    result = run("generate", "hi", "--model", str(bad))
    assert result.returncode == 1
    assert f"Error: {bad}: not a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_keeps_a_multi_turn_conversation(service):
    questions = ["我叫李雷。", "我叫什么名字？"]
    result = run("chat", "--temperature", "0", "--max-new-tokens", "32", stdin="\n".join(questions) + "\n")
    assert result.returncode == 0, result.stderr
    answers = [a.rstrip("\n") for a in result.stdout.split(">>> ")[1:3]]
    history = []
    for question, answer in zip(questions, answers, strict=True):
        history.append({"role": "user", "content": question})
        assert answer == service.chat(history, temperature=0, max_new_tokens=32)
        history.append({"role": "assistant", "content": answer})


def test_ctrl_c_stops_the_answer_not_the_program():
    child = pexpect.spawn(
        sys.executable,
        ["-m", "app", "chat", "--temperature", "0", "--max-new-tokens", "1500"],
        cwd=str(REPO),
        encoding="utf-8",
        timeout=120,
    )
    child.expect_exact(">>> ")
    child.sendline("Count from 1 to 500, separated by commas.")
    child.expect_exact("5. 5")  # the answer is streaming (the model lists "1. 1", "2. 2", ...)
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(">>> ")
    child.sendline("你好")
    child.expect_exact(">>> ")  # answered, and asks again
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_quantize_says_the_source_is_already_quantized_and_offers_allow_requantize(model_path, tmp_path):
    out = tmp_path / "smollm2.q8_0.gguf"
    refused = run("quantize", model_path, str(out), "--type", "q8_0")
    assert refused.returncode == 1 and not out.exists()
    assert refused.stderr.strip().splitlines()[-1] == (
        f"Error: {model_path} is already quantized (Q4_1): llama.cpp quantizes from F32, F16 or BF16 weights. "
        "Quantize the original (hychat convert --outtype f16), or pass --allow-requantize: the result then "
        "carries the error of both quantizations, lower quality than from the original"
    )
    done = run("quantize", model_path, str(out), "--type", "q8_0", "--allow-requantize")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: q8_0, ")
    assert "warning: requantized from Q4_1: the result carries the error of both quantizations" in done.stderr
