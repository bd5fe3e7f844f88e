"""How much a quantization changes the model: perplexity, KL divergence and top-1 agreement of a
quantized GGUF against a reference GGUF (f16/f32) of the same model, on the same text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import llama_build
from app.modelfiles.gguf import read_gguf

# A short bilingual sample; what matters is that both files read the same ids.
SAMPLE_TEXT = (
    "长城是中国古代的军事防御工程，绵延上万里。它始建于春秋战国时期，秦朝统一后连接成一体。"
    "The Great Wall of China is a series of fortifications built across the historical northern borders "
    "of ancient Chinese states. 今天，长城是世界文化遗产，每年吸引数百万游客。Today it is one of the most "
    "visited places in the world, and a symbol of the country's long history."
)


@dataclass(frozen=True)
class QualityReport:
    tokens: int
    perplexity: float
    reference_perplexity: float
    mean_kl: float  # KL(reference || quantized), nats per token
    top1_agreement: float


def compare_quality(quantized: Path, reference: Path, text: str = SAMPLE_TEXT) -> QualityReport:
    ids, ref_logits = _logits(reference, text, None)
    _, q_logits = _logits(quantized, text, ids)
    ref_logp, q_logp = _log_softmax(ref_logits[:-1]), _log_softmax(q_logits[:-1])  # [T-1, V]
    targets = np.array(ids[1:])
    rows = np.arange(len(targets))
    kl = (np.exp(ref_logp) * (ref_logp - q_logp)).sum(-1)
    return QualityReport(
        tokens=len(ids),
        perplexity=float(np.exp(-q_logp[rows, targets].mean())),
        reference_perplexity=float(np.exp(-ref_logp[rows, targets].mean())),
        mean_kl=float(kl.mean()),
        top1_agreement=float((ref_logp.argmax(-1) == q_logp.argmax(-1)).mean()),
    )


def logits_model(path: Path, n_ctx: int, n_threads: int | None = None, lora_path: str | Path | None = None) -> Any:
    """A llama.cpp model that keeps the logits of every position (`llm.scores`), as the service runs it."""
    import llama_cpp

    from app.cpu import physical_cores

    read_gguf(path)
    threads = n_threads or physical_cores()
    llama_build.keep_weights_off_amx()  # it decodes whole texts: multi-token batches
    return llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        flash_attn=True,
        verbose=False,
        lora_path=str(lora_path) if lora_path else None,
    )


def _logits(path: Path, text: str, ids: list[int] | None) -> tuple[list[int], np.ndarray]:
    llm = logits_model(path, n_ctx=1024)
    ids = ids or llm.tokenize(text.encode(), add_bos=True, special=False)
    llm.eval(ids)
    return ids, np.array(llm.scores[: len(ids)], dtype=np.float64)  # [T, V]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
