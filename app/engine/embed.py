"""Embeddings from a llama.cpp context of their own.

The chat engine's context has no pooled outputs, and its thread must not wait for an embedding: so
embeddings get a second context on the same weights, made on first use, with its own thread (a
`Worker`). It pools with the model's own pooling (a BERT-type file declares mean or CLS), or mean
where the file declares none (a chat model). Inputs are decoded several at a
time, one sequence each, as many as fit in one batch; every sequence fits in one micro-batch, which
pooling needs.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from app.engine.worker import Task, Worker
from app.errors import HychatError

log = logging.getLogger(__name__)

MAX_SEQUENCES = 16  # inputs decoded together


class EmbeddingError(HychatError):
    code = "embedding_error"


class Embedder:
    def __init__(self, model: Any, load_params: Any, n_ctx: int, n_threads: int, declares_pooling: bool):
        """`model`: a llama_model_p (kept alive by its owner); `load_params`: the llama_context_params
        of the load (flash attention, KV types... carry over); `n_ctx`: the longest input in tokens;
        `declares_pooling`: the file names its pooling (embedding models do, chat models do not)."""
        self.n_ctx = n_ctx
        pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if declares_pooling else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self._ctx = _context(model, load_params, n_ctx, n_threads, pooling)
        self.pooling = llama_cpp.llama_pooling_type(self._ctx)
        self.n_embd = llama_cpp.llama_model_n_embd_out(model)
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self._worker = Worker("llama.cpp embeddings")

    def embed(self, inputs: Sequence[Sequence[int]], normalize: bool = True) -> np.ndarray:
        """One vector per input ([len(inputs), n_embd]), of length 1 with `normalize`, computed on the
        embedder's thread; each input at most `n_ctx` tokens (the caller checks)."""
        (vectors,) = self._worker.stream(Task(lambda emit: emit(self._compute(inputs, normalize))))
        return vectors

    def close(self) -> None:
        """Frees the context once the work queued before it has run."""
        list(self._worker.stream(Task(lambda emit: self._free())))

    def _compute(self, inputs: Sequence[Sequence[int]], normalize: bool) -> np.ndarray:
        out = np.zeros((len(inputs), self.n_embd), dtype=np.float32)  # [n_inputs, n_embd]
        start = 0
        while start < len(inputs):
            end, n_tokens = start, 0
            while end < len(inputs) and end - start < MAX_SEQUENCES and n_tokens + len(inputs[end]) <= self.n_ctx:
                n_tokens += len(inputs[end])
                end += 1
            out[start:end] = self._decode(inputs[start:end])
            start = end
        if not normalize:
            return out
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)

    def _decode(self, group: Sequence[Sequence[int]]) -> np.ndarray:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        b, n = self._batch, 0
        for seq, ids in enumerate(group):
            for pos, token in enumerate(ids):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, True
                b.seq_id[n][0] = seq
                n += 1
        b.n_tokens = n
        if llama_cpp.llama_decode(self._ctx, b) != 0:
            raise EmbeddingError("llama.cpp could not compute these embeddings")
        rows = []
        for seq in range(len(group)):
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
            if not pointer:
                raise EmbeddingError("llama.cpp returned no embedding")
            rows.append(np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (self.n_embd,)))
        return np.stack(rows)

    def _free(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)


def _context(model: Any, load_params: Any, n_ctx: int, n_threads: int, pooling: int) -> Any:
    params = type(load_params).from_buffer_copy(load_params)
    params.embeddings = True
    params.pooling_type = pooling
    params.n_ctx = params.n_batch = params.n_ubatch = n_ctx  # a whole input in one micro-batch
    params.n_seq_max = MAX_SEQUENCES
    params.kv_unified = True  # the sequences of one batch share the cells
    params.n_threads = params.n_threads_batch = n_threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise EmbeddingError(f"llama.cpp could not make an embedding context of {n_ctx} tokens")
    return ctx
