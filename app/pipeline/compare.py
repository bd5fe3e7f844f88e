"""Do the two backends compute the same model? Teacher-forced parity between llama.cpp (a GGUF) and
transformers (the same GGUF dequantized, or the checkpoint it was converted from)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.pipeline.quality import logits_model


@dataclass(frozen=True)
class ParityReport:
    prompt_tokens: int
    continuation_tokens: int
    top1_agreement: float  # share of positions where both backends predict the same next token
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    first_disagreement: int | None  # position of the first differing prediction, if any
    continuation: str

    @property
    def positions(self) -> int:
        return self.prompt_tokens + self.continuation_tokens


def compare_backends(
    gguf_path: str | Path,
    prompt: str,
    hf_path: str | Path | None = None,
    n_continue: int = 64,
    n_threads: int | None = None,
    lora_path: str | Path | None = None,
) -> ParityReport:
    """Feeds both backends the same token ids, the prompt and llama.cpp's greedy continuation of it,
    and compares their next-token logits at every position. `lora_path`: a GGUF adapter llama.cpp
    applies at run time (compare against the checkpoint it was merged into)."""
    ids, continuation, text, llama_logits = _llama_logits(Path(gguf_path), prompt, n_continue, n_threads, lora_path)
    torch_logits = _torch_logits(Path(hf_path) if hf_path else Path(gguf_path), ids, n_threads)
    agree = llama_logits.argmax(-1) == torch_logits.argmax(-1)  # [T]
    diff = np.abs(llama_logits - torch_logits)  # [T, V]
    return ParityReport(
        prompt_tokens=len(ids) - len(continuation),
        continuation_tokens=len(continuation),
        top1_agreement=float(agree.mean()),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        first_disagreement=None if agree.all() else int(np.argmin(agree)),
        continuation=text,
    )


def _llama_logits(
    path: Path, prompt: str, n_continue: int, n_threads: int | None, lora_path: str | Path | None
) -> tuple[list, list, str, Any]:
    import llama_cpp

    prompt_ids = llama_cpp.Llama(str(path), vocab_only=True, verbose=False).tokenize(
        prompt.encode("utf-8"), add_bos=True, special=True
    )
    # A context just long enough: logits_all keeps n_ctx x n_vocab floats, and the model's own context
    # would be 125 GiB of them for Hunyuan-7B (262144 positions, 128167 tokens).
    n_ctx = len(prompt_ids) + n_continue + 1
    llm = logits_model(path, n_ctx=n_ctx, n_threads=n_threads, lora_path=lora_path)
    vocab = llm._model.vocab
    continuation: list[int] = []
    for token in llm.generate(prompt_ids, temp=0):
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(continuation) == n_continue:
            break
        continuation.append(token)
    ids = prompt_ids + continuation
    llm.reset()
    llm.eval(ids)
    text = llm.detokenize(continuation).decode("utf-8", errors="replace")
    return ids, continuation, text, np.array(llm.scores[: len(ids)], dtype=np.float32)  # [T, V]


def _torch_logits(path: Path, ids: list[int], n_threads: int | None) -> Any:
    import torch
    import transformers

    from app.cpu import physical_cores

    torch.set_num_threads(n_threads or physical_cores())
    extra = {} if path.is_dir() else {"gguf_file": path.name}
    folder = path if path.is_dir() else path.parent
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, local_files_only=True, **extra
    )
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()  # [T, V]
