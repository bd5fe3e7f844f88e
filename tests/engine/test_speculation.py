"""Speculative decoding's policy as plain functions (app/engine/speculation.py): no model here. The
engine's use of it on real llama.cpp is tested in test_speculative.py."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from app.engine.speculation import (
    LONG,
    LONG_MATCH,
    MEMORY,
    PRIOR_CAP,
    SHORT,
    UNTRIED,
    Acceptance,
    Candidate,
    NgramDrafter,
    NgramMemory,
    SlotSpec,
    StepCosts,
    acceptance_figures,
    draft_lengths,
    verify,
)
from app.types import Speculation


def test_the_drafter_proposes_what_followed_the_last_occurrence_of_the_last_n_tokens():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8], n=3)
    assert drafter.draft(4) == ([], SHORT)  # (3, 7, 8) never occurred before
    drafter.extend([1, 2, 3])
    assert drafter.draft(4) == ([7, 8, 1, 2], SHORT)  # the latest occurrence of (1, 2, 3), not the first
    assert drafter.draft(1)[0] == [7]
    assert drafter.draft(0)[0] == []


def test_the_drafter_indexes_tokens_as_they_come_and_stops_at_the_history_end():
    drafter = NgramDrafter([], n=2)
    for token in [5, 6, 7]:
        drafter.extend([token])
        assert drafter.draft(8)[0] == []
    drafter.extend([5, 6])
    assert drafter.draft(3)[0] == [7, 5, 6]
    # Beyond the history's end, as the text it follows went on: a stretch that repeats repeats on.
    assert drafter.draft(8)[0] == [7, 5, 6, 7, 5, 6, 7, 5]


def test_a_draft_found_by_a_long_match_is_of_the_long_kind():
    text = list(range(100, 100 + LONG_MATCH + 2))
    drafter = NgramDrafter([*text, 1, *text[: LONG_MATCH - 1]], n=3)
    assert drafter.draft(3) == (text[LONG_MATCH - 1 : LONG_MATCH + 2], SHORT)  # 7 tokens matched
    drafter.extend([text[LONG_MATCH - 1]])
    assert drafter.draft(3) == ([*text[LONG_MATCH : LONG_MATCH + 2], 1], LONG)


def test_min_hits_wants_the_n_gram_seen_that_often_before():
    drafter = NgramDrafter([1, 2, 3, 1, 2, 4, 1, 2], n=2, min_hits=2)
    assert drafter.draft(2)[0] == [4, 1]  # (1, 2) occurred twice before the current end
    drafter = NgramDrafter([1, 2, 3, 1, 2], n=2, min_hits=2)
    assert drafter.draft(2)[0] == []


def test_the_memory_drafts_what_followed_a_run_in_an_earlier_request():
    memory = NgramMemory(window=4)
    answer = list(range(200, 230))
    NgramDrafter([1, 2, 3, 4, 5, *answer], n=3, memory=memory)  # an earlier request's prompt and answer
    asked_again = NgramDrafter([9, 2, 3, 4, 5], n=3, memory=memory)
    assert asked_again.draft(8) == ([], SHORT)  # its own text has no repeat
    assert asked_again.recall(8) == answer[:8]
    asked_again.extend(answer[:8])
    assert asked_again.recall(100) == answer[8:]  # as far as the memory knows
    assert NgramDrafter([9, 9, 3, 4, 6], n=3, memory=memory).recall(8) == []  # a run it never saw
    assert NgramDrafter([3, 4, 5], n=3, memory=memory).recall(8) == []  # shorter than a run


def test_a_request_drafts_from_its_own_text_or_the_memory_whichever_is_expected_to_give_more():
    memory = NgramMemory(window=4)
    NgramDrafter(list(range(1, 21)), n=3, memory=memory)  # an earlier request: 1 2 3 4 was followed by 5
    engine = acceptance_figures()
    engine[MEMORY].update(20, rejected=False)  # the memory's drafts were accepted so far
    spec = SlotSpec.of(Speculation(), [7, 2, 3, 4, 0, 0, 1, 2, 3, 4], memory=memory)
    assert spec is not None
    assert spec.draft(8, engine) == [5, 6, 7, 8, 9, 10, 11, 12] and spec.kind == MEMORY
    for _ in range(3):
        spec.verified(0, True, engine)  # for this request they were rejected: its own text is expected to do better
    assert spec.draft(8, engine) == [0, 0, 1, 2, 3, 4, 0, 0] and spec.kind == SHORT


def test_the_memory_keeps_the_latest_follower_and_forgets_its_oldest_runs_past_its_bound():
    memory = NgramMemory(window=2, max_runs=8)
    memory.learn([1, 2, 3, 1, 2, 4], 0)
    assert memory.draft([1, 2], 1) == [4]
    memory.learn(list(range(100, 110)), 0)  # 8 more runs: past the bound, the oldest quarter goes
    assert len(memory) <= 8
    assert memory.draft([1, 2], 1) == []  # among the oldest
    assert memory.draft([107, 108], 1) == [109]
    memory.learn([5, 6, 7], 2)  # only runs whose follower is at index 2 or later
    assert memory.draft([5, 6], 1) == [7]
    memory.learn([5, 6, 8, 9, 9, 1], 0, written=False)  # a prompt: adds what was not known
    assert memory.draft([5, 6], 1) == [7] and memory.draft([9, 9], 1) == [1]


def test_step_costs_interpolate_between_measured_sizes_and_extrapolate_beyond():
    costs = StepCosts()
    assert costs(4) is None
    costs.observe(4, 0.020)
    assert costs(4) == pytest.approx(0.020)
    assert costs(2) == pytest.approx(0.010)  # below: in proportion
    assert costs(6) == pytest.approx(0.025)  # one size: each more token half a token's share
    costs.observe(12, 0.044)
    assert costs(8) == pytest.approx(0.032)
    assert costs(20) == pytest.approx(0.068)  # beyond: the slope of the last two
    costs.observe(12, 0.054)  # a running average: one new step moves it a tenth of the way
    assert costs(12) == pytest.approx(0.045)
    costs.observe(16, 0.070)
    assert costs(20) == pytest.approx(0.070 + 4 * 0.025 / 4)  # beyond: the slope of the last two
    # For a sure draft, no size costs more a token than the next smaller one (16 as steps of 12)...
    assert costs(16, sure=True) == pytest.approx(0.045 * 16 / 12)
    # ...and beyond the largest measured, a token costs less than one of the largest: tried once.
    assert costs(20, sure=True) == pytest.approx(0.060 + 4 * UNTRIED * 0.060 / 16)


def test_a_nearly_sure_draft_tries_a_step_larger_than_any_measured_and_then_the_measure_decides():
    # Measured in the engine, a copy 390 tokens into its slot: 28-token steps at 4.8 ms a token, where
    # the 65-token step not measured yet costs 4.45 (the per-step part weighs less).
    costs, beside_others = StepCosts(), StepCosts(untried=1.0)  # the engine's for steps of several sequences
    for n, ms in [(1, 10.5), (3, 21.0), (5, 30.0), (8, 42.0), (13, 63.0), (28, 134.0)]:
        costs.observe(n, ms / 1000)
        beside_others.observe(n, ms / 1000)
    copy = [Candidate(64, rate=0.997)]
    assert draft_lengths(copy, base_tokens=1, outputs=1, cost=costs) == [64]
    assert draft_lengths(copy, base_tokens=1, outputs=1, cost=beside_others)[0] <= 27
    assert draft_lengths([Candidate(64, rate=0.95)], base_tokens=1, outputs=1, cost=costs)[0] <= 27
    for _ in range(30):  # measured: no cheaper a token than 28 tokens, so the shorter step wins again
        costs.observe(65, 65 * 0.0048)
    assert draft_lengths(copy, base_tokens=1, outputs=1, cost=costs)[0] <= 27


def test_a_sure_draft_is_verified_whole_where_a_larger_step_was_measured_while_the_machine_was_busy():
    costs = StepCosts()
    for n, ms in [(1, 11.9), (10, 76.7), (20, 110.0), (61, 452.9)]:  # 61: measured while busy
        costs.observe(n, ms / 1000)
    assert costs(61, sure=True) == pytest.approx(61 * 0.110 / 20)
    assert costs(40, sure=True) == pytest.approx(40 * 0.110 / 20)
    assert costs(10, sure=True) == pytest.approx(0.0767)
    assert draft_lengths([Candidate(62, rate=1.0)], base_tokens=1, outputs=1, cost=costs) == [62]
    assert draft_lengths([Candidate(62, rate=0.9)], base_tokens=1, outputs=1, cost=costs)[0] < 62


def test_a_sure_draft_is_verified_whole_where_small_steps_alone_were_measured():
    # Small steps cost about a token's share each (the event loop competes with the decode), so the
    # slope they show says a long step never pays; a CPU's long steps cost far less a token.
    costs = StepCosts()
    for n, ms in [(1, 9.0), (3, 23.7), (4, 28.1), (5, 35.0), (9, 64.9)]:
        costs.observe(n, ms / 1000)
    assert draft_lengths([Candidate(62, rate=1.0)], base_tokens=1, outputs=1, cost=costs) == [62]


# Measured in the engine on a 2-core Xeon with AMX, a quote 450 tokens into its slot: steps of 2 to 63
# tokens of one sequence cost 16-18 ms a token, a step of 65 (attention in tiles from 64 rows) 6.5.
PADDED = [(1, 26.0), (3, 48.0), (9, 131.0), (18, 290.0), (36, 551.0), (51, 915.0), (65, 415.0)]


def test_a_step_costs_no_more_than_a_larger_measured_one_it_can_be_padded_to():
    costs = StepCosts()
    for n, ms in PADDED:
        costs.observe(n, ms / 1000)
    assert costs.padded(40, most=65) == (pytest.approx(0.415), 65)
    assert costs.padded(40, most=64) == (costs(40), 40)  # the batch or the slot has no room for 65
    assert costs.padded(9, most=65) == (pytest.approx(0.131), 9)  # cheaper as it is
    assert costs.padded(70, most=128) == (costs(70), 70)  # nothing larger measured
    assert StepCosts().padded(4, most=64) is None


def test_a_draft_too_short_for_the_cheap_step_is_verified_in_it_padded():
    costs = StepCosts()
    for n, ms in PADDED:
        costs.observe(n, ms / 1000)
    # 44 tokens left to write: verified whole in a step padded to 65; with no room for 65, a step of 45
    # costs some 0.7 s (as measured between 36 and 51) and a short draft pays best.
    tail = [Candidate(44, rate=0.99)]
    assert draft_lengths(tail, base_tokens=1, outputs=1, cost=costs, most=65) == [44]
    assert draft_lengths(tail, base_tokens=1, outputs=1, cost=costs, most=64) == [8]
    assert draft_lengths(tail, base_tokens=1, outputs=1, cost=costs) == [8]  # not padded: steps of several sequences


def test_drafts_less_sure_beside_many_sequences_are_priced_as_measured():
    # 8 sequences decode at a token's share each already; a draft token accepted 80% of the time
    # costs as much as a token of theirs and gives 0.8 of one.
    costs = StepCosts()
    for n, ms in [(8, 40.0), (9, 45.0), (10, 50.0)]:
        costs.observe(n, ms / 1000)
    assert draft_lengths([Candidate(8, rate=0.8)] * 8, base_tokens=8, outputs=8, cost=costs) == [0] * 8


def _cpu_costs() -> StepCosts:
    """Step times as measured for one sequence on 2 cores (SmolLM2-135M Q4_1): 2 tokens cost 1.9x of 1."""
    costs = StepCosts()
    for n, ms in [(1, 7.65), (2, 14.35), (3, 18.1), (5, 28.0), (9, 43.2), (17, 73.7)]:
        costs.observe(n, ms / 1000)
    return costs


def test_no_draft_where_it_would_not_pay():
    assert draft_lengths([Candidate(16, rate=0.6)], base_tokens=1, outputs=1, cost=_cpu_costs()) == [0]


def test_a_long_draft_where_nearly_every_token_is_accepted():
    # 1.9x for a second token never pays, but 16 more at 0.99 each do: the cost is not convex.
    assert draft_lengths([Candidate(16, rate=0.99)], base_tokens=1, outputs=1, cost=_cpu_costs()) == [16]


def test_in_a_step_of_many_sequences_the_most_likely_draft_tokens_go_first():
    costs = StepCosts()
    for n in range(1, 40):
        costs.observe(n, 0.004 + 0.001 * n)  # a busy step: each token costs a little more
    lengths = draft_lengths([Candidate(8, rate=0.95), Candidate(8, rate=0.3)], 4, 4, costs)
    assert lengths[0] > lengths[1]
    assert lengths[0] == 8


def test_n_min_drops_shorter_drafts_and_nothing_is_drafted_before_a_step_was_measured():
    assert draft_lengths([Candidate(3, rate=0.99, n_min=8)], 1, 1, _cpu_costs()) == [0]
    assert draft_lengths([Candidate(5, rate=0.99)], 2, 2, StepCosts()) == [0]


def test_a_draft_not_verified_is_scored_against_the_tokens_sampled_after_it():
    spec = SlotSpec.of(Speculation(), [1, 2, 3, 4, 1, 2, 3])
    assert spec is not None
    engine = acceptance_figures()
    spec.unverified([4, 1, 2], SHORT)
    spec.unverified([9, 9], LONG)  # one at a time: this one is not looked at
    for token in [4, 1, 7]:
        spec.sampled(token, engine)
    assert (spec.acceptance[SHORT].accepted, spec.acceptance[SHORT].rejected) == (2, 1)
    assert (engine[SHORT].accepted, engine[SHORT].rejected) == (2, 1)
    assert engine[LONG].accepted == engine[LONG].rejected == 0
    spec.unverified([5], LONG)
    spec.sampled(5, engine)  # all of it would have been accepted
    assert (spec.acceptance[LONG].accepted, spec.acceptance[LONG].rejected) == (1, 0) and not spec.shadow
    # Each kind is judged by its own figures, the engine's as the prior.
    assert spec.candidate(4, LONG, engine).rate > spec.candidate(4, SHORT, engine).rate


def test_a_requests_first_draft_of_a_kind_is_short_however_sure_other_requests_were():
    # Quotes made the engine's long matches nearly always right; a chat's may hold for a few tokens.
    engine = acceptance_figures()
    engine[LONG].update(150, rejected=False)
    assert engine[LONG].rate(0.8) > 0.98
    spec = SlotSpec.of(Speculation(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert spec is not None and spec.rate(LONG, engine) == PRIOR_CAP
    first = draft_lengths([spec.candidate(16, LONG, engine)], base_tokens=1, outputs=1, cost=_cpu_costs())[0]
    assert 0 < first < 16  # tried, at a length whose loss is small if the request's text goes elsewhere
    spec.verified(first, rejected=False, engine=engine, kind=LONG)  # all of it accepted: this request copies
    [second] = draft_lengths([spec.candidate(16, LONG, engine)], base_tokens=1, outputs=1, cost=_cpu_costs())
    assert second > first  # and lengthens as its own drafts are accepted
    gone = SlotSpec.of(Speculation(), [1, 2, 3])
    assert gone is not None
    gone.verified(0, rejected=True, engine=engine, kind=LONG)  # its first was rejected: no more of that kind
    assert draft_lengths([gone.candidate(16, LONG, engine)], base_tokens=1, outputs=1, cost=_cpu_costs()) == [0]


def test_acceptance_starts_at_the_prior_and_follows_recent_steps():
    acceptance = Acceptance()
    assert acceptance.rate(0.8) == pytest.approx(0.8)
    for _ in range(30):
        acceptance.update(0, rejected=True)
    assert acceptance.rate(0.8) < 0.15
    for _ in range(60):
        acceptance.update(8, rejected=False)
    assert acceptance.rate(0.8) > 0.95


# -- the acceptance rule: sequences follow the model's distribution whatever the drafts -------------

VOCAB = 4
# A small "model": the next token's probabilities given the last one (a Markov chain).
P = {
    None: [0.5, 0.3, 0.15, 0.05],
    0: [0.1, 0.6, 0.2, 0.1],
    1: [0.7, 0.1, 0.1, 0.1],
    2: [0.25, 0.25, 0.25, 0.25],
    3: [0.05, 0.05, 0.1, 0.8],
}
LENGTH = 3


def _exact(sequence: tuple[int, ...]) -> float:
    p, last = 1.0, None
    for token in sequence:
        p, last = p * P[last][token], token
    return p


def _generate(rng: random.Random, drafter) -> tuple[int, ...]:
    """One sequence of LENGTH tokens, each step verifying the draft `drafter(out)` proposes."""
    out: list[int] = []
    while len(out) < LENGTH:
        before, draft = list(out), drafter(out)

        def sample(i: int, before: list[int] = before, draft: list[int] = draft) -> int | None:
            # As in a decode step: position i's logits are computed after the draft's first i tokens,
            # whatever was sampled; the rule must only read them where those were the samples.
            if len(out) == LENGTH:
                return None
            context = before + draft[:i]
            token = rng.choices(range(VOCAB), P[context[-1] if context else None])[0]
            out.append(token)
            return token

        verify(draft, sample)
    return tuple(out)


@pytest.mark.parametrize(
    "drafter",
    [
        lambda out: [],
        lambda out: [1, 0, 1],  # a fixed guess, often right
        lambda out: [3, 3, 3],  # often wrong
        lambda out: [out[-1]] * 2 if out else [2],  # depends on the output
    ],
)
def test_the_acceptance_rule_keeps_the_models_distribution(drafter):
    rng = random.Random(1234)
    n = 20000
    seen = Counter(_generate(rng, drafter) for _ in range(n))
    # Pearson's chi-square over the 64 sequences (63 degrees of freedom): 0.999 quantile is 103.4.
    chi2 = sum((seen[s] - n * _exact(s)) ** 2 / (n * _exact(s)) for s in itertools.product(range(VOCAB), repeat=LENGTH))
    assert chi2 < 103.4


def test_the_acceptance_rule_counts_what_it_accepted():
    tokens = iter([5, 6, 9, 4])
    assert verify([5, 6, 7], lambda i: next(tokens)) == (2, True)  # 5, 6 accepted; 9 is the model's instead of 7
    tokens = iter([5, 6, 7, 8])
    assert verify([5, 6, 7], lambda i: next(tokens)) == (3, False)  # all, and one more from the last position
    assert verify([5, 6], lambda i: None) == (0, False)  # the request ended at the first position


def test_a_draft_models_tokens_and_its_reading_of_the_prompt_are_priced():
    costs = _cpu_costs()
    free = draft_lengths([Candidate(16, rate=0.99)], 1, 1, costs)
    assert free == [16]
    # Each draft token costing about a step of the target's own: drafting never pays.
    assert draft_lengths([Candidate(16, rate=0.99, seconds=0.007)], 1, 1, costs) == [0]
    # Cheap tokens, but the prompt to read first costs more than the draft saves.
    assert draft_lengths([Candidate(16, rate=0.99, seconds=0.0005, first_seconds=0.5)], 1, 1, costs) == [0]
    assert draft_lengths([Candidate(16, rate=0.99, seconds=0.0005, first_seconds=0.001)], 1, 1, costs) == [16]
