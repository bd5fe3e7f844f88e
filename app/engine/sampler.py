"""How one request picks its tokens: a llama.cpp sampler chain built from its SamplingParams, and
an optional grammar.

The chain's order is llama.cpp's own default (common/sampling.cpp): penalties, top-k, top-p, min-p,
temperature, then the random draw. Penalties count the generated tokens only (as vLLM does for the
OpenAI presence/frequency penalties).

A grammar works as in llama.cpp's common_sampler: the chain draws a token, the grammar checks that
one token, and only when it refuses is the grammar applied to the whole vocabulary and the token
drawn again. Applying the grammar to every candidate at every step instead costs more than the
decode step itself on a small model.

Post-sampling probabilities (llama-server's `post_sampling_probs`) are those the chain's last step
drew from: the chain runs on a candidate array of ours, so the tokens it left and their
probabilities can be read after the draw, as llama-server reads its own array.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

from app.errors import InvalidParameterError
from app.types import SamplingParams

# llama_token_data: {int32 id; float logit; float p}
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class RequestSampler:
    """Owns C samplers: `free()` them when the request ends."""

    def __init__(self, vocab: Any, n_vocab: int, params: SamplingParams):
        self.n_vocab = n_vocab
        self.grammar = _grammar(vocab, params.grammar) if params.grammar is not None else None
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for sampler in _chain(vocab, n_vocab, params):
            llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # the chain owns it from here
        # Greedy leaves one token, whose probability is 1: its post-sampling probabilities need no array.
        self._greedy = params.temperature <= 0
        on_array = self.grammar is not None or (params.post_sampling_probs and not self._greedy)
        self._candidates = np.zeros(n_vocab if on_array else 0, TOKEN_DATA)
        self._kept = 0  # after a draw on the array: how many candidates the chain left, at its start
        # Plain greedy needs no chain: llama_sampler_sample copies the whole vocabulary into a
        # candidate array every token, 1% of a decode step on a small model; argmax reads it in place.
        # Biases that only lower tokens (ignore_eos's ban on end-of-generation) change the argmax only
        # when it is one of them: then the chain decides.
        self._argmax_only = self.grammar is None and _is_plain_greedy(params)
        self._lowered = frozenset(int(token) for token, _ in params.logit_bias)

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits at batch position `index`, accepted into the samplers."""
        if self._argmax_only:
            # The first of equal maxima, as llama.cpp's greedy sampler picks.
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), (self.n_vocab,))
            if (token := int(logits.argmax())) not in self._lowered:
                return token
        if not len(self._candidates):
            return llama_cpp.llama_sampler_sample(self.chain, ctx, index)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), (self.n_vocab,))
        token = self._draw(logits, constrained=False)
        if self.grammar is not None:
            if not self._allowed(token):
                token = self._draw(logits, constrained=True)
            llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def post_sampling(self, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
        """After `sample` drew `token` (with `post_sampling_probs`): its probability in the distribution
        the chain drew from, and that distribution's `n` most likely tokens with their probabilities,
        those of probability 0 left out (llama-server's populate_token_probs)."""
        if self._greedy:  # llama-server's temperature 0 sets every other logit to -inf: p = 1, the rest 0
            return 1.0, [(token, 1.0)][:n]
        kept = self._candidates[: self._kept]
        p = kept["p"]
        top = np.argpartition(-p, n)[:n] if n < len(p) else np.arange(len(p))
        top = top[np.argsort(-p[top], kind="stable")]
        chosen = p[kept["id"] == token]
        return float(chosen[0]) if len(chosen) else 0.0, [(int(kept["id"][i]), float(p[i])) for i in top if p[i] > 0]

    def free(self) -> None:
        for sampler in (self.chain, self.grammar):
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
        self.chain = self.grammar = None

    def _draw(self, logits: np.ndarray, constrained: bool) -> int:
        candidates = self._candidates
        candidates["id"] = np.arange(self.n_vocab)  # samplers sort the array in place
        candidates["logit"] = logits
        array = _token_array(candidates)
        if constrained:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        self._kept = array.size  # the samplers shrink the array in place: its first `size` are left
        return int(candidates["id"][array.selected])

    def _allowed(self, token: int) -> bool:
        single = np.array([(token, 1.0, 0.0)], TOKEN_DATA)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(_token_array(single)))
        return bool(np.isfinite(single["logit"][0]))


def _token_array(candidates: np.ndarray) -> Any:
    pointer = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    return llama_cpp.llama_token_data_array(pointer, len(candidates), -1, False)


def _grammar(vocab: Any, grammar: str) -> Any:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidParameterError("the grammar does not parse (GBNF with a `root` rule expected)", "grammar")
    return sampler


def _is_plain_greedy(p: SamplingParams) -> bool:
    penalised = p.repetition_penalty != 1 or p.presence_penalty or p.frequency_penalty
    return p.temperature <= 0 and not penalised and all(bias <= 0 for _, bias in p.logit_bias) and not p.infill


def _chain(vocab: Any, n_vocab: int, p: SamplingParams) -> Any:
    if p.logit_bias:  # first, as in llama.cpp's common_sampler; the backend made every key a token id
        biases = (llama_cpp.llama_logit_bias * len(p.logit_bias))(*((int(t), b) for t, b in p.logit_bias))
        yield llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases)
    if p.repetition_penalty != 1 or p.presence_penalty or p.frequency_penalty:
        yield llama_cpp.llama_sampler_init_penalties(
            n_vocab, p.max_new_tokens, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
        )
    if p.temperature <= 0:
        if p.infill:
            yield llama_cpp.llama_sampler_init_infill(vocab)
        yield llama_cpp.llama_sampler_init_greedy()
        return
    if p.top_k > 0:
        yield llama_cpp.llama_sampler_init_top_k(p.top_k)
    yield llama_cpp.llama_sampler_init_top_p(p.top_p, 1)
    yield llama_cpp.llama_sampler_init_min_p(p.min_p, 1)
    if p.infill:  # where llama-server's default chain for fill-in-the-middle clients puts it
        yield llama_cpp.llama_sampler_init_infill(vocab)
    yield llama_cpp.llama_sampler_init_temp(p.temperature)
    yield llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED if p.seed is None else p.seed)
