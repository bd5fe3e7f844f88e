"""Fill-in-the-middle prompts on both real backends: a tiny random HunYuan whose tokenizer has
Qwen2.5-Coder's FIM tokens, served by PyTorch from its checkpoint and by llama.cpp from the GGUF the
product's converter made of it. llama.cpp finds the tokens in the GGUF by their text; PyTorch by the
same texts in its tokenizer. The embedded SmolLM2 has none."""

from __future__ import annotations

import pytest

from app.errors import InvalidParameterError
from app.services.llamacpp_service import LlamaCppBackend
from app.services.model_service import TorchBackend
from app.types import GenerationRequest, Infill, SamplingParams
from tests.torch_models import FIM_SPECIAL

PREFIX = "def 长城(x):\n    "
SUFFIX = "\n    return y\n"


@pytest.fixture(scope="module")
def backends(coder_dir, coder_gguf):
    llama = LlamaCppBackend()
    llama.load_model(model_path=str(coder_gguf), n_ctx=256, n_threads=2)
    torch = TorchBackend()
    torch.load_model(str(coder_dir), dtype="float32", n_ctx=256)
    yield {"llamacpp": llama, "pytorch": torch}
    llama.unload()
    torch.unload()


def prompt_ids(backend, infill: Infill, max_new_tokens: int = 16) -> list[int]:
    return backend.prompt(GenerationRequest(SamplingParams(max_new_tokens=max_new_tokens), infill=infill)).ids


def special(backend) -> dict[str, int]:
    pre, suf, mid, rep, sep = (backend.tokenize(t, add_special=False)[0] for t in FIM_SPECIAL)
    return {"pre": pre, "suf": suf, "mid": mid, "rep": rep, "sep": sep}


@pytest.mark.parametrize("name", ["llamacpp", "pytorch"])
def test_the_prompt_is_the_repo_level_fim_layout(backends, name):
    backend = backends[name]
    t = special(backend)

    def text(s: str) -> list[int]:
        return backend.tokenize(s, add_special=False, parse_special=False)

    ids = prompt_ids(backend, Infill(PREFIX, SUFFIX, prompt="a = "))
    repo = [t["rep"], *text("myproject\n"), t["sep"], *text("filename\n")]
    assert ids == [*repo, t["pre"], *text(PREFIX), *text("a = "), t["suf"], *text(SUFFIX), t["mid"]]
    assert backend.info()["infill"] is True


def test_both_backends_make_the_same_prompt_and_read_special_text_in_code_as_text(backends):
    extra = (("utils.py", "def helper():\n    pass\n"),)
    infill = Infill(PREFIX + "s = '<|fim_middle|>'\n", SUFFIX, extra=extra)
    llama, torch = (prompt_ids(backends[name], infill) for name in ("llamacpp", "pytorch"))
    assert llama == torch
    t = special(backends["llamacpp"])
    assert llama.count(t["mid"]) == 1 and llama[-1] == t["mid"]  # the code's "<|fim_middle|>" is text
    assert llama.count(t["sep"]) == 2 and backends["llamacpp"].detokenize(llama).count("utils.py\ndef helper") == 1


def test_a_long_prefix_keeps_its_end_and_the_extra_files_fill_what_is_left(backends):
    backend, t = backends["llamacpp"], special(backends["llamacpp"])
    long_prefix = "".join(f"第{i}行 = {i}\n" for i in range(200))
    ids = prompt_ids(backend, Infill(long_prefix, SUFFIX, extra=(("big.py", "x = 1\n" * 300),)), max_new_tokens=32)
    assert len(ids) + 32 <= 256  # the answer still has its room in the context
    prefix = ids[ids.index(t["pre"]) + 1 : ids.index(t["suf"])]
    assert backend.detokenize(prefix).endswith("第199行 = 199\n") and not backend.detokenize(prefix).startswith("第0行")
    # The files keep their end, right before the FIM part: the last one's text runs up to it.
    assert backend.detokenize(ids[: ids.index(t["pre"])]).endswith("x = 1\n<|file_sep|>filename\n")


def test_a_model_without_fim_tokens_says_so(service):
    with pytest.raises(InvalidParameterError, match="fill-in-the-middle is not supported by this model"):
        service.start(GenerationRequest(infill=Infill("def f(", "return 1")))
    assert service.info()["infill"] is False
