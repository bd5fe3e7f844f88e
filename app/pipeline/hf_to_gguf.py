"""Hugging Face checkpoint -> GGUF through llama.cpp's own converter, then checks of what it wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.modelfiles.gguf import GGUFHeader, read_gguf
from app.pipeline.files import PipelineError, atomic_output, check_space
from app.pipeline.llama_converter import converter_dir, run_llama_script

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
# Mixed Chinese, English and code: the tokenizer must split it exactly as the checkpoint's does.
TOKENIZER_SAMPLE = (
    "你好，世界！Hunyuan-7B 是腾讯的模型。The quick brown fox jumps over 13 lazy dogs.\n"
    "def add(a, b):\n    return a + b  # 加法\n<think>\n推理\n</think>"
)


@dataclass
class ConvertResult:
    path: Path
    outtype: str
    size_bytes: int
    checks: list[str] = field(default_factory=list)  # what was verified, one line each
    notes: list[str] = field(default_factory=list)  # what differs but does not make the GGUF wrong


def convert(
    hf_dir: Path,
    out: Path,
    cache_dir: Path,
    outtype: str = "f16",
    vocab_pre: str | None = None,
    force: bool = False,
) -> ConvertResult:
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise PipelineError(f"{hf_dir}: not a Hugging Face checkpoint folder (no config.json)")
    if outtype not in OUTTYPES:
        raise PipelineError(f"--outtype must be one of {', '.join(OUTTYPES)}")
    folder = converter_dir(cache_dir)
    weights = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors")) or sum(
        f.stat().st_size for f in hf_dir.glob("*.bin")
    )
    need = weights * (2 if outtype == "f32" else 1)  # f32 output of a 16-bit checkpoint doubles
    with atomic_output(out, force=force, need_bytes=need, inputs=(hf_dir,)) as partial:
        _run_converter(folder, hf_dir, partial, outtype, vocab_pre)
        header = read_gguf(partial)
        checks, notes = check_conversion(hf_dir, partial, header)
    return ConvertResult(Path(out), outtype, Path(out).stat().st_size, checks, notes)


def _run_converter(folder: Path, hf_dir: Path, out: Path, outtype: str, vocab_pre: str | None) -> None:
    args = [str(hf_dir), "--outfile", str(out), "--outtype", outtype]
    try:
        run_llama_script(folder, "convert_hf_to_gguf.py", args, vocab_pre)
    except PipelineError as error:
        if "pre-tokenizer was not recognized" not in str(error):
            check_space(out)  # the converter's own traceback would bury a full disk
            raise
        raise PipelineError(
            f"{hf_dir}: llama.cpp's converter does not recognise this tokenizer's pre-tokenizer (it "
            "identifies it by a hash of how the tokenizer splits a test text, and this hash is not in its "
            "table: a new or retrained tokenizer). Say which one it is with --vocab-pre NAME, for "
            "example --vocab-pre hunyuan for Hunyuan-7B's tokenizer, or the name of the base model family."
        ) from None


def check_conversion(hf_dir: Path, gguf_path: Path, header: GGUFHeader) -> tuple[list[str], list[str]]:
    """Special token ids, chat template and tokenization of the GGUF against the checkpoint's: what
    was checked, and notes on what differs without making the GGUF wrong."""
    import llama_cpp

    config = _json(hf_dir / "config.json")
    generation = _json(hf_dir / "generation_config.json")
    problems, checks, notes = [], [], []
    meta = header.metadata

    expected_eos = config.get("eod_token_id", config.get("eos_token_id"))  # Hunyuan's converter reads eod
    if isinstance(expected_eos, list):
        expected_eos = expected_eos[0]
    if expected_eos is not None and meta.get("tokenizer.ggml.eos_token_id") != expected_eos:
        problems.append(f"EOS id is {meta.get('tokenizer.ggml.eos_token_id')}, the checkpoint says {expected_eos}")
    else:
        checks.append(f"EOS id {meta.get('tokenizer.ggml.eos_token_id')} matches the checkpoint")
    vocab = _vocab(gguf_path)
    listed = generation.get("eos_token_id")
    listed = [t for t in (listed if isinstance(listed, list) else [listed]) if t is not None]
    stops = set(listed)
    ends = {t for t in stops if llama_cpp.llama_vocab_is_eog(vocab._model.vocab, t)}
    # The converter can mark only the EOS and one end-of-turn id (Hunyuan's: the list's first); a further
    # stop id, such as the <|extra_5|> Hunyuan's generation configs list after <|eos|>, has no GGUF field.
    required = {t for t in (expected_eos, *listed[:1]) if t is not None}
    missing = sorted((stops & required) - ends)
    if missing:
        problems.append(f"generation stops on {sorted(stops)}, but {missing} do not end generation in the GGUF")
    elif ends:
        checks.append(f"end-of-generation ids {sorted(ends)} are end-of-generation in the GGUF")
    if stops - ends - required:
        notes.append(
            f"generation_config.json also stops on {sorted(stops - ends - required)}, which the GGUF cannot mark as "
            "end-of-generation: llama.cpp will not stop on it (transformers does)"
        )

    template = _hf_chat_template(hf_dir)
    if template and meta.get("tokenizer.chat_template") != template:
        problems.append("the chat template is missing from the GGUF or differs from the checkpoint's")
    elif template:
        checks.append("chat template embedded")

    hf_ids = _hf_tokenize(hf_dir, TOKENIZER_SAMPLE)
    gguf_ids = vocab.tokenize(TOKENIZER_SAMPLE.encode(), add_bos=False, special=True)
    if hf_ids != gguf_ids:
        first = next((i for i, (a, b) in enumerate(zip(hf_ids, gguf_ids, strict=False)) if a != b), len(hf_ids))
        problems.append(
            f"tokenizers disagree on the sample from token {first}: {hf_ids[first : first + 5]} vs "
            f"{gguf_ids[first : first + 5]}"
        )
    else:
        checks.append(
            f"tokenizer gives the same {len(hf_ids)} ids as the checkpoint's on a Chinese/English/code sample"
        )
    if problems:
        raise PipelineError(f"{gguf_path.name} does not match {hf_dir}: " + "; ".join(problems))
    return checks, notes


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _hf_chat_template(hf_dir: Path) -> str | None:
    template = _json(hf_dir / "tokenizer_config.json").get("chat_template")
    jinja = hf_dir / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else template if isinstance(template, str) else None


def _vocab(gguf_path: Path) -> Any:
    """The GGUF's tokenizer alone (llama.cpp loads no weights for it)."""
    import llama_cpp

    return llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)


def _hf_tokenize(hf_dir: Path, text: str) -> list[int]:
    return load_hf_tokenizer(hf_dir)(text, add_special_tokens=False).input_ids


def load_hf_tokenizer(hf_dir: Path) -> Any:
    """The checkpoint's own tokenizer, as llama.cpp's converter loads it."""
    import transformers

    # Hunyuan-7B ships its tokenizer as code (tokenization_hy.py + hy.tiktoken); the converter runs
    # that same code, so the checks do too.
    remote_code = any(Path(hf_dir).glob("tokenization_*.py"))
    return transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, trust_remote_code=remote_code)
