"""A draft model for speculative decoding: a smaller GGUF with the target's vocabulary, in a llama.cpp
context of its own with one sequence per slot of the target's engine (llama-server's -md).

The batch engine asks it, within a step, for the next tokens of the slots that draft: it brings each
slot's sequence up to the tokens that slot holds (keeping the prefix it already has, reading the
rest in batches), then drafts greedily, one token per slot per decode, all slots in one batch,
stopping a slot's draft where its top token's probability falls under `p_min`. It runs on the
engine's thread, between the target's decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import llama_cpp
import numpy as np

from app.engine.admission import common_prefix


@dataclass
class DraftRequest:
    slot: int
    tokens: list[int]  # what the target slot holds, and the token it decodes next
    n: int  # draft at most this many
    p_min: float = 0.0


class DraftModel:
    def __init__(self, ctx: Any, n_vocab: int, n_slots: int, n_batch: int):
        self._ctx, self._n_vocab, self._n_batch = ctx, n_vocab, n_batch
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._cached: list[list[int]] = [[] for _ in range(n_slots)]  # tokens whose cells each sequence holds
        # Time spent drafting, tokens drafted; time spent reading what slots hold, tokens read.
        self.seconds, self.tokens = 0.0, 0
        self.read_seconds, self.read_tokens = 0.0, 0

    def draft(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        """Each request's draft (shorter than asked where the model is unsure, or none)."""
        start = perf_counter()
        rows = self._catch_up(requests)
        self.read_seconds += perf_counter() - start
        start = perf_counter()
        drafts: list[list[int]] = [[] for _ in requests]
        while rows:
            going = []
            for i, row in rows:
                token, p = self._top(row)
                if p < requests[i].p_min:
                    continue
                drafts[i].append(token)
                if len(drafts[i]) < requests[i].n:
                    going.append((i, token))
            rows = self._decode([(requests[i].slot, [token]) for i, token in going])
            rows = [(going[k][0], row) for k, (_, row) in enumerate(rows)]
        self.seconds += perf_counter() - start
        self.tokens += sum(len(d) for d in drafts)
        return drafts

    def seconds_per_token(self) -> float:
        """What a draft token has cost so far; 0 before any was made."""
        return self.seconds / self.tokens if self.tokens else 0.0

    def catch_up_seconds(self, slot: int, tokens: Sequence[int]) -> float:
        """What reading the tokens slot `slot`'s sequence lacks of `tokens` would take, at the rate
        measured so far (0 before any was read): a new request's prompt, before its first draft."""
        missing = len(tokens) - common_prefix(self._cached[slot], tokens)
        return missing * self.read_seconds / self.read_tokens if self.read_tokens else 0.0

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    def _catch_up(self, requests: Sequence[DraftRequest]) -> list[tuple[int, int]]:
        """Brings each request's sequence to its tokens; the logits row of each one's last token."""
        pending = []
        for i, r in enumerate(requests):
            cached = self._cached[r.slot]
            keep = min(common_prefix(cached, r.tokens), len(r.tokens) - 1)  # the last is read again: its logits
            llama_cpp.llama_memory_seq_rm(self._memory, r.slot, keep, -1)
            del cached[keep:]
            pending.append((i, r.slot, r.tokens[keep:]))
            self.read_tokens += len(r.tokens) - keep
        rows: list[tuple[int, int]] = []
        while pending:  # in batches of n_batch tokens: long prompts over several decodes
            budget, chunks, rest = self._n_batch, [], []
            for i, slot, tokens in pending:
                take = tokens[: max(budget, 0)]
                budget -= len(take)
                if take:
                    chunks.append((i, slot, take, len(take) == len(tokens)))
                if len(take) < len(tokens):
                    rest.append((i, slot, tokens[len(take) :]))
            decoded = self._decode([(slot, take) for _, slot, take, _ in chunks], [last for *_, last in chunks])
            rows += [(chunks[k][0], row) for k, (_, row) in enumerate(decoded) if chunks[k][3]]
            pending = rest
        return rows

    def _decode(self, chunks: list[tuple[int, list[int]]], logits: list[bool] | None = None) -> list[tuple[int, int]]:
        """Decodes each slot's tokens after its cached ones, in slot order; (chunk, logits row) of those
        asked (all by default) for their last token."""
        if not chunks:
            return []
        b, n, rows = self._batch, 0, []
        order = sorted(range(len(chunks)), key=lambda k: chunks[k][0])  # ascending sequences: one micro-batch
        for k in order:
            slot, tokens = chunks[k]
            cached = self._cached[slot]
            for offset, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = token, len(cached) + offset, 1
                b.seq_id[n][0] = slot
                b.logits[n] = offset == len(tokens) - 1 and (logits is None or logits[k])
                n += 1
            if logits is None or logits[k]:
                rows.append((k, n - 1))
            cached.extend(tokens)
        b.n_tokens = n
        if llama_cpp.llama_decode(self._ctx, b) != 0:
            for slot, _ in chunks:  # the draft is only a guess: no draft, and read again next time
                llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
                self._cached[slot].clear()
            return []
        return sorted(rows)

    def _top(self, row: int) -> tuple[int, float]:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, row), (self._n_vocab,))
        token = int(logits.argmax())
        return token, float(1 / np.exp(logits - logits[token]).sum())
