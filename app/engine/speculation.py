"""Speculative decoding's policy, as plain data and functions: where drafts come from, what a step
of n tokens costs, how much of a draft is accepted, and how many draft tokens each slot verifies.

No llama.cpp here (the engine, `batch.BatchEngine`, decodes and samples), so the policy is tested on
its own (tests/engine/test_speculation.py).

Why the depth is chosen and not fixed: on a CPU a decode step is compute-bound, so each verified
token costs time whether accepted or not. Measured here (2 cores, SmolLM2-135M Q4_1,
benchmarks/decode_steps.py): a step of 2 tokens of one sequence takes 1.8x a step of 1, a step of 9
4.9x. A draft pays only where enough of it is accepted, and how much that is depends on the request
(quoting a text back accepts nearly all, free chat little) and on the machine and model. So the engine
measures both as it runs and verifies, each step, the draft tokens that make the most tokens per
second: none where none pay.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.types import Speculation

# Kinds of draft, each with acceptance figures of its own: prompt lookup's found by a short match, by
# a long one (LONG_MATCH tokens or more: a copy of earlier text, nearly always right), a draft model's,
# the engine's n-gram memory's (text any request read or wrote before).
SHORT, LONG, MODEL, MEMORY = 0, 1, 2, 3
LONG_MATCH = 8
FIRST_ACCEPTANCE = 0.8  # an engine's figure for a kind before any draft of it was checked
# The most a request believes of other requests' figures for a kind, before its own drafts of it were
# checked: they may be other work (a quote's long matches are nearly all accepted, a chat's repeated
# phrase often only for a few tokens), so its first draft is short, and lengthens as its own are accepted.
PRIOR_CAP = 0.9
SHADOW_TOKENS = 8  # of a draft not verified, checked against the tokens sampled after it
SURE = 0.95  # drafts whose tokens are accepted this often are priced as sure (StepCosts)
# For a sure draft, each token of a step larger than any measured costs this share of a token's in the
# largest measured (StepCosts): less, as a step's fixed part weighs less in a larger step (measured in
# the engine 390 tokens into a slot: 4.8 ms a token in steps of 28, 4.45 in steps of 65), so the larger
# step is tried once, and then its measure decides.
UNTRIED = 0.8


def acceptance_figures() -> dict[int, Acceptance]:
    return {kind: Acceptance() for kind in (SHORT, LONG, MODEL, MEMORY)}


class NgramMemory:
    """The engine's memory of text (llama-server's ngram-mod): for every run of `window` tokens that a
    request read or wrote, the token that followed it, across requests. An answer asked again, a file
    rewritten turn after turn, a template filled request after request is drafted from the first
    token, where a request's own prompt lookup knows only its own text. The window is long (24, as
    llama-server's) so that a hit is nearly always right. Runs are keyed by their hash (two runs with
    one hash only cost a rejected draft); past `max_runs`, the oldest are forgotten down to 3/4 of it."""

    def __init__(self, window: int = 24, max_runs: int = 1 << 18):
        self.window, self.max_runs = window, max_runs
        self._next: dict[int, int] = {}  # hash of a run -> the token after its latest occurrence

    def __len__(self) -> int:
        return len(self._next)

    def learn(self, tokens: Sequence[int], start: int, written: bool = True) -> None:
        """The runs of `tokens` whose follower is at `start` or later, learned. Those the model `written`
        replace what was known of a run; a prompt's only add runs not known. (A prompt holds what was
        said before, an answer what the model writes: a request asked again writes the answer again,
        where its prompt may have had the same runs followed by other tokens, as in a rewritten file.)"""
        w, follows = self.window, self._next
        for i in range(max(start, w), len(tokens)):
            key = hash(tuple(tokens[i - w : i]))
            if written:
                follows[key] = tokens[i]
            else:
                follows.setdefault(key, tokens[i])
        if len(follows) > self.max_runs:
            for key in list(itertools.islice(follows, len(follows) - self.max_runs * 3 // 4)):
                del follows[key]

    def draft(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to `k` tokens that followed `tokens`' last run before, each looked up after the ones
        drafted before it; [] where that run is unknown."""
        if len(tokens) < self.window:
            return []
        run, out = list(tokens[-self.window :]), []
        while len(out) < k:
            token = self._next.get(hash(tuple(run)))
            if token is None:
                break
            out.append(token)
            run.append(token)
            del run[0]
        return out


class NgramDrafter:
    """Prompt lookup (vLLM's n-gram, llama-server's ngram-simple): the tokens that followed the most
    recent earlier occurrence of the history's last `n` tokens. An index from each n-gram to where
    it last ended is kept as tokens arrive, so a lookup costs one dict access. With the engine's
    `memory`, the request's tokens are learned there as they come, and `recall` drafts from it."""

    def __init__(self, tokens: Sequence[int], n: int, min_hits: int = 1, memory: NgramMemory | None = None):
        self.n, self.min_hits, self.memory = n, min_hits, memory
        self.tokens: list[int] = []
        self._follows: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest occurrence
        self._hits: dict[tuple[int, ...], int] = {}
        self.extend(tokens, written=False)

    def extend(self, tokens: Sequence[int], written: bool = True) -> None:
        """More tokens of the request: the model's own (`written`), or its prompt's."""
        start = len(self.tokens)
        for token in tokens:
            # The n-gram ending at the last token is indexed now that its follower is known.
            if len(self.tokens) >= self.n:
                key = tuple(self.tokens[-self.n :])
                self._follows[key] = len(self.tokens)
                self._hits[key] = self._hits.get(key, 0) + 1
            self.tokens.append(token)
        if self.memory is not None:
            self.memory.learn(self.tokens, start, written)

    def recall(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the history's last run in the engine's memory."""
        return self.memory.draft(self.tokens, k) if self.memory is not None and k > 0 else []

    def draft(self, k: int) -> tuple[list[int], int]:
        """Up to `k` tokens that may come next ([] when the last n tokens never occurred before), and
        their kind: LONG where the tokens before match for LONG_MATCH tokens at least, else SHORT."""
        tokens = self.tokens
        if k <= 0 or len(tokens) < self.n:
            return [], SHORT
        key = tuple(tokens[-self.n :])
        start = self._follows.get(key)
        if start is None or self._hits[key] < self.min_hits:
            return [], SHORT
        matched = self.n
        while matched < LONG_MATCH and matched < start and tokens[start - 1 - matched] == tokens[-1 - matched]:
            matched += 1
        # Past the end of the history the draft goes on as the text it follows went on: its own first
        # tokens, so a stretch that repeats every few tokens drafts as far as asked.
        draft = tokens[start : start + k]
        while len(draft) < k:
            draft.append(draft[len(draft) - (len(tokens) - start)])
        return draft, LONG if matched >= LONG_MATCH else SHORT


class StepCosts:
    """What a decode step of n tokens takes here, measured as the engine runs: the steps that read no
    prompt (every token of them gives logits, as a draft's do; a prompt's are cheaper), an average
    per size. A size not measured is interpolated between measured ones; beyond the largest, each
    more token costs what the last two measured sizes say, or with one, half a token's share of it.

    For sure drafts (`sure=True`), no size costs more a token than the next smaller size measured (it
    could be done as steps of that size), and a size beyond the largest measured costs less a token
    (`untried`, 1 for no less): a size measured while the machine was busy ties with the smaller
    ones, and one not measured yet is tried, once, and measured. On a CPU a token costs less in a
    larger step (63 tokens of one sequence cost 28 times one token, 17 tokens 8.3 times:
    benchmarks/decode_steps.py), which costs measured at small sizes alone never show: their slope
    says a long step never pays. Drafts less sure are priced as measured: there the optimism would
    verify tokens that do not pay."""

    decay = 0.9  # weight of the average so far against a new measurement

    def __init__(self, untried: float = UNTRIED) -> None:
        self.untried = untried
        self._seconds: dict[int, float] = {}
        self._sizes: list[int] = []  # the measured sizes, sorted (prompts bring many)
        self._capped: dict[int, float] | None = None  # each one's, at most the next smaller one's a token

    def observe(self, n_tokens: int, seconds: float) -> None:
        old = self._seconds.get(n_tokens)
        if old is None:
            bisect.insort(self._sizes, n_tokens)
        self._seconds[n_tokens] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds
        self._capped = None  # made again when a sure draft asks (every step observes; few steps ask)

    def __call__(self, n_tokens: int, sure: bool = False) -> float | None:
        """Seconds for a step of `n_tokens`; None before any step was measured."""
        if not self._sizes:
            return None
        seconds, i = (self._sure_seconds() if sure else self._seconds), bisect.bisect_left(self._sizes, n_tokens)
        if i < len(self._sizes) and self._sizes[i] == n_tokens:
            return seconds[n_tokens]
        if i == 0:
            above = self._sizes[0]
            return seconds[above] * n_tokens / above
        below = self._sizes[i - 1]
        if i == len(self._sizes):
            if sure:
                slope = self.untried * seconds[below] / below
            elif i > 1:
                before = self._sizes[i - 2]
                slope = max((seconds[below] - seconds[before]) / (below - before), 0.0)
            else:
                slope = 0.5 * seconds[below] / below
            return seconds[below] + slope * (n_tokens - below)
        above = self._sizes[i]
        estimate = seconds[below] + (n_tokens - below) / (above - below) * (seconds[above] - seconds[below])
        return min(estimate, seconds[below] * n_tokens / below) if sure else estimate

    def padded(self, n_tokens: int, most: int, sure: bool = False) -> tuple[float, int] | None:
        """A step of `n_tokens` as cheap as it gets: (seconds, size), its own estimate, or a larger size
        up to `most` tokens measured to cost less, to pad the step to. (On a CPU, llama.cpp's attention
        reads 64 query rows of one sequence or more in tiles: on an AMX Xeon a step of 64 tokens after
        300 cost half one of 63, benchmarks/decode_steps.py.) Estimates between measured sizes are
        linear and rise beyond them, so a measured size is the only larger one that may cost less."""
        own = self(n_tokens, sure)
        if own is None:
            return None
        best = (own, n_tokens)
        seconds = self._sure_seconds() if sure else self._seconds
        for size in self._sizes[bisect.bisect_right(self._sizes, n_tokens) : bisect.bisect_right(self._sizes, most)]:
            best = min(best, (seconds[size], size))
        return best

    def _sure_seconds(self) -> dict[int, float]:
        if self._capped is None:
            self._capped, share = {}, float("inf")
            for size in self._sizes:
                share = min(share, self._seconds[size] / size)  # the next smaller one's, as capped
                self._capped[size] = size * share
        return self._capped


@dataclass
class Acceptance:
    """How likely a request's next draft token is accepted, given the ones before it were: accepted
    tokens over accepted tokens and rejections (at most one per step), recent steps weighing more,
    with `prior` (the engine's figure over all requests so far) as a few steps' worth of evidence."""

    accepted: float = 0.0
    rejected: float = 0.0
    decay = 0.95
    prior_weight = 2.0

    def update(self, accepted: int, rejected: bool) -> None:
        self.accepted = self.decay * self.accepted + accepted
        self.rejected = self.decay * self.rejected + rejected

    def rate(self, prior: float) -> float:
        return (self.accepted + self.prior_weight * prior) / (self.accepted + self.rejected + self.prior_weight)


@dataclass(frozen=True)
class Candidate:
    """A slot's draft this step: `tokens` (at hand, or as many as a draft model may make), accepted at
    `rate` each, each costing `seconds` to make (a draft model's; prompt lookup's are free)."""

    tokens: int
    rate: float
    n_min: int = 0
    seconds: float = 0.0
    first_seconds: float = 0.0  # paid once, with its first token (a draft model reading the prompt)


@dataclass
class SlotSpec:
    """One generating request's speculative state, kept by the engine."""

    params: Speculation
    drafter: NgramDrafter | None  # None: the draft model drafts
    acceptance: dict[int, Acceptance] = field(default_factory=acceptance_figures)  # by kind of draft
    kind: int = SHORT  # of the draft this step verifies
    # A draft at hand that was not verified, checked against the tokens sampled after it: what it
    # would have accepted is known at no cost, so a request whose drafts did not pay starts verifying
    # them as soon as they would, without a probe.
    shadow: list[int] = field(default_factory=list)
    shadow_accepted: int = 0
    shadow_kind: int = SHORT

    @classmethod
    def of(
        cls,
        params: Speculation | None,
        prompt: Sequence[int],
        draft_model: bool = False,
        memory: NgramMemory | None = None,
    ) -> SlotSpec | None:
        """A request's state, None where it does not draft. Type draft without a draft model: ngram."""
        if params is None or params.type == "none" or params.n_max <= 0:
            return None
        if params.type == "draft" and draft_model:
            return cls(params, None, kind=MODEL)
        return cls(params, NgramDrafter(prompt, params.ngram_size_n, params.ngram_min_hits, memory))

    def draft(self, k: int, engine: dict[int, Acceptance]) -> list[int]:
        """Prompt lookup's draft of up to `k` tokens, from the request's own text or from the engine's
        memory, whichever is expected to have more of its tokens accepted; its kind goes to `kind`."""
        assert self.drafter is not None
        own, self.kind = self.drafter.draft(k)
        recalled = self.drafter.recall(k)
        if recalled and self._expected(len(recalled), MEMORY, engine) > self._expected(len(own), self.kind, engine):
            own, self.kind = recalled, MEMORY
        return own

    def rate(self, kind: int, engine: dict[int, Acceptance]) -> float:
        """How likely a draft token of `kind` is accepted: this request's figure, the engine's as its prior."""
        return self.acceptance[kind].rate(min(engine[kind].rate(FIRST_ACCEPTANCE), PRIOR_CAP))

    def _expected(self, tokens: int, kind: int, engine: dict[int, Acceptance]) -> float:
        rate = self.rate(kind, engine)
        return sum(rate**i for i in range(1, tokens + 1))

    def candidate(
        self, tokens: int, kind: int, engine: dict[int, Acceptance], seconds: float = 0.0, first_seconds: float = 0.0
    ) -> Candidate:
        """Its draft of `kind` as a candidate, at `rate`."""
        return Candidate(tokens, self.rate(kind, engine), self.params.n_min, seconds, first_seconds)

    def verified(self, accepted: int, rejected: bool, engine: dict[int, Acceptance], kind: int | None = None) -> None:
        """A draft of `kind` (this step's) was checked: into this request's and the engine's figures."""
        kind = self.kind if kind is None else kind
        for figures in (self.acceptance, engine):
            figures[kind].update(accepted, rejected)

    def unverified(self, draft: list[int], kind: int) -> None:
        """This step verifies none of `draft`: its first tokens are checked against the samples to come
        instead (a few, so that the figures move within a few tokens, not after a whole long draft)."""
        if not self.shadow:
            self.shadow, self.shadow_accepted, self.shadow_kind = draft[:SHADOW_TOKENS], 0, kind

    def sampled(self, token: int, engine: dict[int, Acceptance]) -> None:
        """A token sampled in a step without a draft: the unverified draft's next token, or not."""
        if not self.shadow:
            return
        if token == self.shadow[0]:
            self.shadow_accepted += 1
            del self.shadow[0]
            if self.shadow:
                return
        self.verified(self.shadow_accepted, bool(self.shadow), engine, self.shadow_kind)
        self.shadow = []


def verify(draft: Sequence[int], sample: Callable[[int], int | None]) -> tuple[int, bool]:
    """The acceptance rule. `sample(i)` samples the model's token at draft position i (after the
    tokens before it, whose logits the step computed) exactly as a step without drafts would, and
    hands it on; None when the request ended there. Position i's draft token is accepted where it is
    the sample of position i - 1: the next sample then reads logits computed after the right tokens.
    So each token comes from the model's own distribution given the ones before it, drawn from the
    same sampler in the same order as without drafts: greedy answers, and sampled ones with a seed,
    are the same with speculation as without, and a draft only decides how many come from one step.
    (For a drafted token t and the model's probabilities p, t is accepted with probability p(t) and a
    rejection's sample follows p without t, renormalized: the standard rule for a draft that is one
    sure token.) Returns how many draft tokens were accepted, and whether one was rejected."""
    for i in range(len(draft) + 1):
        token = sample(i)
        if token is None or i == len(draft):
            return i, False
        if token != draft[i]:
            return i, True
    raise AssertionError("unreachable")


def draft_lengths(
    candidates: Sequence[Candidate], base_tokens: int, outputs: int, cost: StepCosts, most: int = 0
) -> list[int]:
    """How many draft tokens each candidate verifies in a step that holds `base_tokens` tokens already
    and yields `outputs` tokens without drafts: the choice that makes the most tokens per second, the
    step padded up to `most` tokens where that costs less (StepCosts.padded).

    The i-th token of a draft is accepted with probability rate**i (all before it must be), so the
    draft tokens of all candidates are taken most likely first; each count of them is priced with
    the measured step costs (not convex: on a CPU one sequence's second token costs far more than
    its third), and the best count wins. Drafting must beat not drafting; among counts as good as the
    best (all of a sure draft, where a token costs the same in any larger step), the largest wins:
    fewer, larger steps save what a step costs beyond what was measured."""
    if cost(base_tokens) is None:
        return [0] * len(candidates)
    sure = is_sure(candidates)
    ranked = sorted(
        ((p, i) for i, c in enumerate(candidates) for p in _likelihoods(c)),
        key=lambda item: -item[0],
    )
    steps = _step_seconds(cost, base_tokens, len(ranked), most, sure)
    rates = [outputs / steps[0]]  # tokens per second with the m most likely draft tokens
    expected, drafting, started = float(outputs), 0.0, set()
    for p, i in ranked:
        expected += p
        drafting += candidates[i].seconds + (candidates[i].first_seconds if i not in started else 0.0)
        started.add(i)
        rates.append(expected / (steps[len(rates)] + drafting))
    best_rate, best_m = max(rates[1:], default=0.0), 0
    if best_rate > rates[0] * (1 + 1e-9):
        best_m = max(m for m, rate in enumerate(rates) if m and rate >= best_rate * (1 - 1e-6))
    lengths = [0] * len(candidates)
    for _, i in ranked[:best_m]:
        lengths[i] += 1
    for i, c in enumerate(candidates):
        if lengths[i] < c.n_min:
            lengths[i] = 0
    return lengths


def _likelihoods(c: Candidate) -> list[float]:
    """How likely each token of the candidate's draft is accepted, while that is worth pricing."""
    out, p = [], 1.0
    for _ in range(c.tokens):
        p *= c.rate
        if p < 0.01:
            break
        out.append(p)
    return out


def is_sure(candidates: Sequence[Candidate]) -> bool:
    """Whether a step's drafts are priced as sure (StepCosts)."""
    return all(c.rate >= SURE for c in candidates if c.tokens)


def _step_seconds(cost: StepCosts, base_tokens: int, drafted: int, most: int, sure: bool) -> list[float]:
    """What the step costs with 0 to `drafted` draft tokens: as estimated, or where it may be padded
    up to `most` tokens, what the cheapest step it can be padded to costs (StepCosts.padded)."""
    top = base_tokens + drafted
    seconds = [_cost(cost, n, sure) for n in range(base_tokens, top + 1)]
    padded = cost.padded(top, most, sure)
    if most >= top and padded is not None:
        seconds[-1] = padded[0]
        for i in range(len(seconds) - 2, -1, -1):
            seconds[i] = min(seconds[i], seconds[i + 1])
    return seconds


def _cost(cost: StepCosts, n_tokens: int, sure: bool) -> float:
    seconds = cost(n_tokens, sure)
    assert seconds is not None
    return seconds
