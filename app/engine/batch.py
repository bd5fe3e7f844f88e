"""Continuous batching for llama.cpp: one context, `n_slots` sequences decoded together.

One thread owns the context. Each step it admits waiting requests into free slots, builds one
llama.cpp batch holding the next token of every generating sequence plus prompt chunks of the ones
still reading their prompt, decodes it, samples every sequence that produced logits (each with its
own sampler chain) and hands the new pieces to their readers. A request joins between two steps and
leaves the moment it ends or its reader goes away; nobody waits for the longest answer.

What llama.cpp needs from us (measured, see docs/architecture.md): the KV cache is split per slot
(`kv_unified` off), which keeps each sequence's output identical to running it alone. With
`kv_unified` on (llama-server's --kv-unified) the slots share one pool of cells that any request may
fill: a step that finds no room drops the cells idle slots keep and tries once more, and if there
is still none every running request fails, as in llama-server (server-context.cpp). A batch lists
its sequences in ascending slot order, or llama.cpp cuts it into extra micro-batches; more tokens
than `n_batch` in a batch, or sampling a position without logits, abort the whole process, so both
are prevented here. A slot keeps the tokens of its last request in its KV cells, so a follow-up
that starts with them (the next turn of a chat) skips that prefix.

LoRA adapters apply to a whole context, so one batch holds only requests of one adapter set. When
requests of several sets run together, the sets take turns of `turn_s` (admission.next_turn),
and a slot's cached prefix serves only a request of the set it was computed with.

With a host cache (`prompt_cache.PromptCache`, llama-server's --cache-ram), what a slot holds is
saved to RAM before a request of another conversation overwrites it, and a request whose prompt
shares more with a saved state than with any free slot gets that state restored into its slot.

Speculative decoding (`speculation.py`, the policy; `draft.py`, a draft model): a generating slot may
put draft tokens after its next token in the batch, all with logits; `_verify` samples them in order
as far as the draft holds and drops the cells of the rejected ones, so the answer is the one a step
per token gives (within a slot's first 256 cells llama.cpp computes a few tokens of one sequence
exactly as one; beyond, its attention takes another path that rounds differently, as a prompt read
in other batches does).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import math
import mmap
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import llama_cpp
import numpy as np

from app.engine.admission import AdmissionQueue, choose_slot, next_turn
from app.engine.detokenize import TextAssembler
from app.engine.draft import DraftModel, DraftRequest
from app.engine.prompt_cache import PromptCache, SavedState
from app.engine.sampler import RequestSampler
from app.engine.source import END, Failure, TokenSource
from app.engine.speculation import (
    MODEL,
    UNTRIED,
    Candidate,
    NgramMemory,
    SlotSpec,
    StepCosts,
    acceptance_figures,
    draft_lengths,
    is_sure,
    verify,
)
from app.errors import EngineClosedError, HychatError, QueueFullError
from app.types import PromptProgress, SlotState, Speculation, TokenEvent, TokenLogprob, TopLogprob, UsageClock

log = logging.getLogger(__name__)


class EngineError(HychatError):
    code = "engine_error"


class ContextFullError(EngineError):
    """The slots' shared KV cells (kv_unified) ran out: llama-server's words for it."""

    code = "context_full"

    def __init__(self) -> None:
        super().__init__("Context size has been exceeded: the requests running together filled the KV cache they share")


# Drafts fill a step up to this many tokens. Measured (this llama.cpp on a CPU, flash attention on): a
# step of 64 tokens or more of one sequence gives other logits than steps of one token (up to 1.4 apart:
# from 64 query rows its flash attention is tiled, GGML_FA_TILE_Q); up to 63 the same bits, so an
# answer with drafts is the one without (benchmarks/decode_steps.py). That holds within a slot's first
# EXACT_CELLS cells: beyond, a step of one token already rounds otherwise than a step of several (its
# one query's attention over 512 cells or more is split across threads), so there a step holds as many
# tokens as pay.
EXACT_STEP_TOKENS = 63
EXACT_CELLS = 256


@dataclass
class Vocabulary:
    """What the engine needs to know of the model's tokens."""

    n_vocab: int
    piece: Callable[[int], bytes]  # a token's bytes, special tokens as b""
    is_end: Callable[[int], bool]  # end of generation (EOS, EOT, ...)


@dataclass(frozen=True)
class AdapterSet:
    """LoRA adapters and their scales, as llama_set_adapters_lora takes them. `key`: (adapter id, scale)
    pairs by id, no zero scales: requests with equal keys decode in one batch."""

    key: tuple[tuple[int, float], ...] = ()
    adapters: tuple[Any, ...] = ()  # llama_adapter_lora_p, in key order


NO_ADAPTERS = AdapterSet()


@dataclass
class Ticket:
    """One admitted request: its prompt, its sampler, and the line back to its reader."""

    prompt: list[int]
    sampler: RequestSampler  # freed by the engine once submitted
    max_new_tokens: int
    stop: tuple[str, ...]
    logprobs: int | None
    clock: UsageClock
    ignore_eos: bool = False
    cache_prompt: bool = True  # false: the slot's cached prefix is not reused (llama-server's cache_prompt)
    post_sampling_probs: bool = False  # logprobs of what the sampler chain left, not of the model's distribution
    progress: bool = False  # also post PromptProgress events while the prompt is read
    adapters: AdapterSet = NO_ADAPTERS
    speculation: Speculation | None = None  # None or type "none": no drafts
    cancelled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _buffer: list[Any] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _events: Any = None

    def cancel(self) -> None:
        self.cancelled = True

    def attach(self, loop: asyncio.AbstractEventLoop | None, events: Any) -> None:
        """The reader is ready: what the engine posted before now goes out first, in order."""
        with self._lock:
            self._loop, self._events = loop, events
            for item in self._buffer:
                self._put(item)
            self._buffer.clear()

    def post(self, item: Any) -> bool:
        """Called by the engine. False: an asyncio reader, reached in the engine's per-step hand-over."""
        with self._lock:
            if self._events is None:
                self._buffer.append(item)
            elif self._loop is None:
                self._events.put(item)
            else:
                return False
            return True

    def _put(self, item: Any) -> None:
        if self._loop is None:
            self._events.put(item)
        else:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)


@dataclass
class _Slot:
    index: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in this slot's cells, in order
    cached_with: tuple = ()  # the adapter set (its key) those cells were computed with
    ticket: Ticket | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be decoded in the next step
    text: TextAssembler | None = None
    t_start: float = 0.0  # when its request got it
    spec: SlotSpec | None = None  # its request drafts (speculative decoding)
    draft: list[int] = field(default_factory=list)  # draft tokens decoded after next_token this step
    pad: int = 0  # tokens decoded after the draft this step only to make the step a cheaper size (_draft)

    @property
    def generating(self) -> bool:
        return self.ticket is not None and not self.pending


class BatchEngine(TokenSource[Ticket]):
    turn_s = 0.1  # how long an adapter set keeps the context while others wait (docs/BENCHMARKS.md)
    # The host cache saves slots holding at least this many tokens, and restores a state that saves at
    # least this many more than the slot's own: copying a state costs more than reading a few tokens.
    host_cache_min_tokens = 32

    def __init__(
        self,
        ctx: Any,  # llama_context_p, owned (freed) by the engine
        vocab: Vocabulary,
        n_slots: int,
        n_ctx_slot: int,
        n_batch: int,
        max_waiting: int,
        on_state: Callable[[int, int, int], None],  # (queued, busy, slots), for metrics
        kv_unified: bool = False,  # the context's cells are one pool for all slots
        on_decode: Callable[[int], None] = lambda n_sequences: None,  # after each llama_decode, for metrics
        prompt_cache: PromptCache | None = None,  # slots' states kept in RAM (None: none)
        # For metrics: a state restored from it (its tokens), and the change in the bytes it holds.
        on_host_cache: Callable[[int, int], None] = lambda restored_tokens, bytes_change: None,
        draft_model: DraftModel | None = None,  # for requests of speculative type draft; owned (freed) here
    ):
        self._ctx, self._vocab = ctx, vocab
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_slots, self.n_ctx_slot, self.n_batch = n_slots, n_ctx_slot, n_batch
        self.kv_unified = kv_unified
        self._slots = [_Slot(i) for i in range(n_slots)]
        self._waiting: AdmissionQueue[Ticket] = AdmissionQueue(max_waiting, on_drop=lambda t: t.sampler.free())
        self._wake = threading.Condition()
        self._closing = False
        self._keep_asked: list[threading.Event] = []  # keep_states calls waiting for the engine
        self._on_state, self._on_decode, self._on_host_cache = on_state, on_decode, on_host_cache
        self.prompt_cache = prompt_cache
        self._reported: tuple[int, int, int] | None = None
        self._applied, self._turn_start = NO_ADAPTERS.key, 0.0  # the context's adapter set, and since when
        # Seconds per decode step by its tokens, for the draft lengths, apart by how many sequences the
        # step holds: llama.cpp decodes sequences holding unequal counts as several micro-batches
        # (llama_batch_allocr::split_equal: as many tokens of each at a time), so a draft beside
        # one-token sequences costs a micro-batch more than the same tokens of one sequence, and one
        # long copy's steps would price every step of their size. Only steps of one sequence try sizes
        # larger than any measured: there the copies are, while a long draft beside others holds their
        # tokens for its whole length.
        self._costs: dict[int, StepCosts] = {}
        self._acceptance = acceptance_figures()  # over all requests, by kind of draft: a new request's start
        self._ngrams = NgramMemory()  # what every request read and wrote, for prompt lookup's drafts
        self._draft_model = draft_model
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._thread = threading.Thread(target=self._run, name="llama.cpp batch", daemon=True)
        self._thread.start()
        # At exit Python frees the weights this thread may still be decoding with: a segfault.
        atexit.register(_abort_at_exit, weakref.ref(self))

    # -- the readers' side ---------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> Ticket:
        with self._wake:
            if self._closing:
                ticket.sampler.free()
                raise EngineClosedError("the model is being replaced or unloaded; retry")
            # A slot whose client has left is released before the next admission: it counts as free,
            # so clients that hang up never make a newcomer's request a 429.
            free = sum(s.ticket is None or s.ticket.cancelled for s in self._slots)
            if not self._waiting.offer(ticket, free_slots=free):
                ticket.sampler.free()
                raise QueueFullError(
                    f"all {self.n_slots} slots are busy and {self._waiting.max_waiting} requests are waiting"
                )
            self._wake.notify()
        self._report()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        ticket.cancel()
        with self._wake:
            self._wake.notify()

    def _attach(self, ticket: Ticket, loop: asyncio.AbstractEventLoop | None, events: Any) -> None:
        ticket.attach(loop, events)

    def close(self) -> None:
        """Stops taking requests; the running ones finish, then the context is freed."""
        with self._wake:
            self._closing = True
            self._wake.notify()

    def keep_states(self, wait_s: float = 60) -> None:
        """Has the engine write the slots' states and those in RAM to the host cache's disk tier, and
        waits for it: at shutdown, since a server ended by its signal runs no more Python after its
        lifespan. Nothing without a disk tier."""
        if self.prompt_cache is None or self.prompt_cache.files is None or not self._thread.is_alive():
            return
        done = threading.Event()
        with self._wake:
            self._keep_asked.append(done)
            self._wake.notify()
        done.wait(wait_s)

    def abort(self, wait_s: float = 10) -> None:
        """Cancels every request and waits for the thread to free the context."""
        with self._wake:
            self._closing = True
            for ticket in [s.ticket for s in self._slots if s.ticket is not None] + list(self._waiting):
                ticket.cancel()
            self._wake.notify()
        self._thread.join(wait_s)

    @property
    def busy(self) -> int:
        return sum(s.ticket is not None for s in self._slots)

    def slots(self) -> list[SlotState]:
        """A snapshot of every slot (GET /slots). The lock keeps admission out, so no slot changes
        hands while it is read; the decode step runs outside it, so each slot's ticket is read once and
        every value is one attribute read (atomic under the GIL): a running slot's counts may be a step
        behind, never a mix of two requests."""
        with self._wake:
            return [_slot_state(slot) for slot in self._slots]

    # -- the engine's side ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                outbox: list[tuple[Ticket, Any]] = []
                self._admit(outbox)
                self._step(outbox)
                self._report()  # before the hand-over: a reader that got its answer sees its slot free
                self._hand_over(outbox)
                self._keep_if_asked()
        except Exception:  # the thread must not die silently: fail whoever is waiting
            log.exception("batch engine stopped")
            self._fail_all(EngineError("the llama.cpp engine stopped; see the server log"))
        finally:
            self._close_prompt_cache()
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            if self._draft_model is not None:
                self._draft_model.close()

    def _close_prompt_cache(self) -> None:
        """Its states go with the context, or to its disk tier."""
        if self.prompt_cache is not None:
            self._write_states()
            self._on_host_cache(0, -self.prompt_cache.used_bytes)  # 0 unless the writing failed
            self.prompt_cache = None

    def _keep_if_asked(self) -> None:
        with self._wake:
            asked, self._keep_asked = self._keep_asked, []
        if asked:
            self._write_states()
            for done in asked:
                done.set()

    def _write_states(self) -> None:
        """The slots' states (the slots keep them too) and the RAM cache's go to its disk tier; the RAM
        cache is left empty."""
        cache = self.prompt_cache
        try:
            if cache.files is not None:
                for slot in self._slots:
                    self._save(slot)
            held = cache.used_bytes
            cache.close()
        except Exception:  # a disk that fails costs the states, never the engine
            log.exception("the prompt cache's states could not be written")
        else:
            self._on_host_cache(0, -held)

    def _wait_for_work(self) -> bool:
        with self._wake:
            while True:
                self._drop_cancelled()
                if any(s.ticket for s in self._slots) or len(self._waiting) or self._keep_asked:
                    return True
                if self._closing:
                    return False
                self._report()
                self._wake.wait()

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.ticket is not None and slot.ticket.cancelled:
                self._release(slot)

    def _admit(self, outbox: list) -> None:
        with self._wake:
            free = [s.index for s in self._slots if s.ticket is None]
            while free and (ticket := self._waiting.pop()) is not None:
                usable = {i: self._slots[i].cached for i in free if self._slots[i].cached_with == ticket.adapters.key}
                index, reuse = choose_slot(free, usable, ticket.prompt)
                free.remove(index)
                reuse = self._from_host(self._slots[index], ticket, reuse if ticket.cache_prompt else 0)
                self._assign(self._slots[index], ticket, reuse)
                if ticket.progress:  # the request has started: its 0% (llama-server's first update)
                    outbox.append((ticket, self._progress(self._slots[index])))
            self._report()  # a ticket moves from the line to a slot: never seen in neither

    def _from_host(self, slot: _Slot, ticket: Ticket, reuse: int) -> int:
        """How much of the prompt `slot` holds for `ticket`: a state from the host cache, restored in
        it when that holds more; what the slot held goes to the cache first."""
        cache = self.prompt_cache
        if cache is None:
            return reuse
        saved, shared = cache.best(ticket.prompt, ticket.adapters.key) if ticket.cache_prompt else (None, 0)
        shared = min(shared, len(ticket.prompt) - 1)  # the last prompt token is read again: its logits
        if saved is None or shared < reuse + self.host_cache_min_tokens:
            if reuse < len(slot.cached):
                self._save(slot)
            return reuse
        self._save(slot)
        llama_cpp.llama_memory_seq_rm(self._memory, slot.index, -1, -1)
        slot.cached.clear()
        data = (ctypes.c_ubyte * len(saved.data)).from_buffer(saved.data)  # read in place, not copied
        if llama_cpp.llama_state_seq_set_data(self._ctx, data, len(saved.data), slot.index) == 0:
            log.warning("a saved prompt state did not restore; the prompt is read whole")
            llama_cpp.llama_memory_seq_rm(self._memory, slot.index, -1, -1)
            return 0
        slot.cached, slot.cached_with = list(saved.tokens), saved.adapters
        self._on_host_cache(shared, 0)
        return shared

    def _save(self, slot: _Slot) -> None:
        if self.prompt_cache is None or len(slot.cached) < self.host_cache_min_tokens:
            return
        size = llama_cpp.llama_state_seq_get_size(self._ctx, slot.index)
        # A mapping of its own, which llama.cpp writes into: dropped from the cache, its memory goes back
        # to the system at once (in the heap, megabytes freed among live objects stay in the process).
        data = mmap.mmap(-1, size)
        written = llama_cpp.llama_state_seq_get_data(
            self._ctx, (ctypes.c_ubyte * size).from_buffer(data), size, slot.index
        )
        if written:
            before = self.prompt_cache.used_bytes
            self.prompt_cache.put(SavedState(tuple(slot.cached), slot.cached_with, data))
            self._on_host_cache(0, self.prompt_cache.used_bytes - before)

    def _assign(self, slot: _Slot, ticket: Ticket, reuse: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot.index, reuse, -1)
        del slot.cached[reuse:]
        slot.cached_with = ticket.adapters.key
        slot.ticket, slot.pending, slot.next_token = ticket, ticket.prompt[reuse:], None
        slot.text = TextAssembler(ticket.stop)
        slot.t_start = perf_counter()
        ticket.clock.cached_tokens = reuse
        spec = SlotSpec.of(ticket.speculation, ticket.prompt, self._draft_model is not None, self._ngrams)
        slot.spec, slot.draft = spec, []

    def _step(self, outbox: list) -> None:
        plan = self._plan()
        if not plan:
            return
        t_step = perf_counter()  # after the plan: a draft model's drafting is priced on its own
        outputs = self._fill_batch(plan)
        reads_prompt = not all(slot.generating for slot, _ in plan)
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status == 1 and self.kv_unified and self._purge_idle():  # 1: no room in the cells (nothing decoded)
            status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            self._decode_failed(plan, status, outbox)
            return
        self._on_decode(len(plan))
        for slot, tokens in plan:
            slot.cached.extend(tokens)
            if slot.next_token is not None:
                slot.next_token = None
            else:
                del slot.pending[: len(tokens)]
                if slot.ticket is not None and slot.ticket.progress:  # a batch of its prompt: before any token
                    outbox.append((slot.ticket, self._progress(slot)))
        for slot, index in outputs:
            self._verify(slot, index, outbox) if slot.draft else self._sample(slot, index, len(slot.cached), outbox)
        if not reads_prompt:  # the decode and the sampling: what each token adds to a step besides the decode counts
            self._step_costs(len(plan)).observe(self._batch.n_tokens, perf_counter() - t_step)

    def _plan(self) -> list[tuple[_Slot, list[int]]]:
        """Which tokens of which slot go into this step's batch, in slot order. Generating slots
        come first in the token budget, so a long prompt never stalls the running answers; drafts
        take what the prompts leave."""
        active = self._turn([s for s in self._slots if s.ticket is not None])
        budget = self.n_batch - sum(s.generating for s in active)
        plan = []
        for slot in active:
            if slot.generating:
                plan.append((slot, [slot.next_token]))
            elif budget > 0:
                chunk = slot.pending[:budget]
                budget -= len(chunk)
                plan.append((slot, chunk))
        if any(len(slot.cached) < EXACT_CELLS for slot, _ in plan):
            budget = min(budget, EXACT_STEP_TOKENS - sum(len(tokens) for _, tokens in plan))
        if budget > 0:
            self._draft(plan, budget)
        return plan

    def _draft(self, plan: list[tuple[_Slot, list[int]]], budget: int) -> None:
        """Adds to the generating slots' tokens the draft tokens worth verifying (speculation.py):
        prompt lookup's drafts are at hand; the draft model makes its drafts once their lengths are
        chosen, since making them costs."""
        drafting = [(slot, tokens) for slot, tokens in plan if slot.spec is not None and slot.generating]
        rooms = [self._room(slot, budget) for slot, _ in drafting]
        specs = [slot.spec for slot, _ in drafting if slot.spec is not None]
        drafts = [  # None: the draft model's, made once the lengths are chosen
            spec.draft(room, self._acceptance) if spec.drafter is not None else None
            for spec, room in zip(specs, rooms, strict=True)
        ]
        if not any(room if draft is None else draft for draft, room in zip(drafts, rooms, strict=True)):
            return
        candidates = [
            self._candidate(slot, spec, room, draft)
            for (slot, _), spec, room, draft in zip(drafting, specs, rooms, drafts, strict=True)
        ]
        outputs = sum(slot.generating for slot, _ in plan)
        costs = self._step_costs(len(plan))
        base = sum(len(tokens) for _, tokens in plan)
        # A step of one sequence may be padded, within the batch and the slot's cells (measured there).
        most = min(base + budget, self.n_ctx_slot - 1 - len(plan[0][0].cached)) if len(plan) == 1 else 0
        lengths = draft_lengths(candidates, base, outputs, costs, most)
        for i, n in enumerate(lengths):
            lengths[i] = n = min(n, budget)
            budget -= n
        self._from_model([slot for slot, _ in drafting], specs, lengths, drafts)
        for (slot, tokens), spec, draft, n in zip(drafting, specs, drafts, lengths, strict=True):
            verified = (draft or [])[:n]
            if len(verified) < spec.params.n_min:  # a draft model's may stop short
                verified = []
            if verified:
                spec.shadow = []  # the tokens of this step are checked by verify
            elif draft and spec.drafter is not None:
                spec.unverified(draft, spec.kind)
            slot.draft = verified
            tokens.extend(verified)
        if most and plan[0][0].draft:
            n = base + len(plan[0][0].draft)
            padded = costs.padded(n, most, is_sure(candidates))
            plan[0][0].pad = padded[1] - n if padded is not None else 0

    def _step_costs(self, sequences: int) -> StepCosts:
        costs = self._costs.get(sequences)
        if costs is None:  # not setdefault: twice a step, it would make a table each time
            costs = self._costs[sequences] = StepCosts(untried=UNTRIED if sequences == 1 else 1.0)
        return costs

    def _room(self, slot: _Slot, budget: int) -> int:
        """The longest draft the slot's request may use: its tokens, the cells of its context."""
        ticket, spec = slot.ticket, slot.spec
        assert ticket is not None and spec is not None
        left = ticket.max_new_tokens - ticket.clock.completion_tokens - 1
        return max(0, min(spec.params.n_max, budget, left, self.n_ctx_slot - 2 - len(slot.cached)))

    def _candidate(self, slot: _Slot, spec: SlotSpec, room: int, draft: list[int] | None) -> Candidate:
        if spec.drafter is not None:
            return spec.candidate(len(draft or ()), spec.kind, self._acceptance)
        model = self._draft_model
        assert model is not None
        reading = model.catch_up_seconds(slot.index, [*slot.cached, slot.next_token])
        return spec.candidate(room, MODEL, self._acceptance, model.seconds_per_token(), reading)

    def _from_model(self, slots: list[_Slot], specs: list[SlotSpec], lengths: list[int], drafts: list) -> None:
        """The draft model's drafts, in `drafts`, for the slots it drafts for and `lengths` chose."""
        chosen = [i for i, (spec, n) in enumerate(zip(specs, lengths, strict=True)) if spec.drafter is None and n]
        if not chosen or self._draft_model is None:
            return
        requests = [
            DraftRequest(slots[i].index, [*slots[i].cached, slots[i].next_token], lengths[i], specs[i].params.p_min)
            for i in chosen
        ]
        for i, draft in zip(chosen, self._draft_model.draft(requests), strict=True):
            drafts[i] = draft

    def _turn(self, active: list[_Slot]) -> list[_Slot]:
        """The slots of the adapter set whose turn it is; that set applied to the context."""
        sets = {slot.ticket.adapters.key: slot.ticket.adapters for slot in active if slot.ticket is not None}
        if not sets:
            return active
        key = next_turn(list(sets), self._applied, perf_counter() - self._turn_start, self.turn_s)
        if key != self._applied:
            chosen = sets[key]
            n = len(chosen.adapters)
            pointers = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*chosen.adapters)
            scales = (ctypes.c_float * n)(*(scale for _, scale in key))
            llama_cpp.llama_set_adapters_lora(self._ctx, pointers, n, scales)
            self._applied, self._turn_start = key, perf_counter()
        return [slot for slot in active if slot.ticket is not None and slot.ticket.adapters.key == key]

    def _fill_batch(self, plan: list[tuple[_Slot, list[int]]]) -> list[tuple[_Slot, int]]:
        b = self._batch
        n, outputs = 0, []
        for slot, tokens in plan:
            wants_logits = slot.generating or len(tokens) == len(slot.pending)
            first_output = len(tokens) - 1 - len(slot.draft)  # a draft's every token is checked
            for offset, token in enumerate(tokens):
                b.token[n] = token
                b.pos[n] = len(slot.cached) + offset
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = slot.index
                b.logits[n] = wants_logits and offset >= first_output
                n += 1
            if wants_logits:
                outputs.append((slot, n - 1 - len(slot.draft)))
            # Padding: any token after the draft; no logits, and its cells go with the rejected draft's.
            for offset in range(len(tokens), len(tokens) + slot.pad):
                b.token[n], b.pos[n], b.n_seq_id[n] = tokens[-1], len(slot.cached) + offset, 1
                b.seq_id[n][0], b.logits[n] = slot.index, False
                n += 1
            slot.pad = 0
        b.n_tokens = n
        return outputs

    def _progress(self, slot: _Slot) -> TokenEvent:
        ticket = slot.ticket
        assert ticket is not None
        elapsed_ms = (perf_counter() - slot.t_start) * 1000
        progress = PromptProgress(len(ticket.prompt), ticket.clock.cached_tokens, len(slot.cached), elapsed_ms)
        return TokenEvent("", progress=progress)

    def _verify(self, slot: _Slot, index: int, outbox: list) -> None:
        """Samples the positions of next_token and of the draft after it as far as the draft holds
        (speculation.verify); the cells of the rejected draft tokens are dropped."""
        ticket, spec, draft = slot.ticket, slot.spec, slot.draft
        assert ticket is not None and spec is not None
        start = len(slot.cached) - len(draft)  # the cells up to next_token's
        # Counted as they go: the token that ends the request reports its usage, this step's included.
        clock = ticket.clock
        clock.drafted_tokens += len(draft)
        clock.drafts += 1

        def sample(i: int) -> int | None:
            clock.accepted_tokens += i > 0  # position i is sampled once draft token i - 1 was accepted
            return self._sample(slot, index + i, start + i, outbox)

        accepted, rejected = verify(draft, sample)
        del slot.cached[start + accepted :]
        llama_cpp.llama_memory_seq_rm(self._memory, slot.index, len(slot.cached), -1)
        slot.draft = []
        spec.verified(accepted, rejected, self._acceptance)

    def _sample(self, slot: _Slot, index: int, n_cached: int, outbox: list) -> int | None:
        """Samples the token after the slot's first `n_cached` tokens from the logits at `index` and
        hands it on; the token, or None when the request ended there."""
        ticket, text = slot.ticket, slot.text
        assert ticket is not None and text is not None
        # Read before sampling: the logits of the model's own distribution, before any filter.
        before = ticket.logprobs is not None and not ticket.post_sampling_probs
        logprobs = self._log_softmax(index) if before else None
        token = ticket.sampler.sample(self._ctx, index)
        ticket.clock.sampled()
        if self._vocab.is_end(token) and not ticket.ignore_eos:
            self._finish(slot, "stop", outbox)
            return None
        ticket.clock.completion_tokens += 1
        logprob = None
        if logprobs is not None:
            logprob = self._token_logprob(logprobs, token, ticket.logprobs)
        elif ticket.logprobs is not None:
            logprob = self._post_sampling_logprob(ticket, token)
        outbox.append((ticket, TokenEvent(text.push(self._vocab.piece(token)), token, logprob=logprob)))
        if text.stopped:
            self._finish(slot, "stop", outbox)
            return None
        # The sampled token is decoded next step at position n_cached: it must fit in the slot.
        if ticket.clock.completion_tokens >= ticket.max_new_tokens or n_cached + 1 >= self.n_ctx_slot:
            self._finish(slot, "length", outbox)
            return None
        if slot.spec is not None and slot.spec.drafter is not None:
            slot.spec.drafter.extend((token,))
            if not slot.draft:
                slot.spec.sampled(token, self._acceptance)
        slot.next_token = token
        return token

    def _log_softmax(self, index: int) -> np.ndarray:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), (self._vocab.n_vocab,))
        shifted = logits - logits.max()  # a copy: llama.cpp reuses its buffer
        return shifted - np.log(np.exp(shifted).sum())

    def _token_logprob(self, logprobs: np.ndarray, token: int, n_top: int) -> TokenLogprob:
        top = np.argpartition(logprobs, -n_top)[-n_top:] if n_top else []
        alternatives = tuple(self._top(int(t), float(logprobs[t])) for t in sorted(top, key=lambda t: -logprobs[t]))
        chosen = self._top(token, float(logprobs[token]))
        return TokenLogprob(chosen.token, chosen.bytes, chosen.logprob, chosen.id, top=alternatives)

    def _post_sampling_logprob(self, ticket: Ticket, token: int) -> TokenLogprob:
        """The log of the probabilities the sampler chain drew `token` from (llama-server's
        post_sampling_probs; its answers show them as probabilities)."""
        assert ticket.logprobs is not None
        p, top = ticket.sampler.post_sampling(token, ticket.logprobs)
        alternatives = tuple(self._top(t, _log(q)) for t, q in top)
        chosen = self._top(token, _log(p))
        return TokenLogprob(chosen.token, chosen.bytes, chosen.logprob, chosen.id, top=alternatives)

    def _top(self, token: int, logprob: float) -> TopLogprob:
        raw = self._vocab.piece(token)
        return TopLogprob(raw.decode("utf-8", errors="replace"), raw, logprob, token)

    def _finish(self, slot: _Slot, reason: str, outbox: list) -> None:
        ticket, text = slot.ticket, slot.text
        assert ticket is not None and text is not None
        usage = ticket.clock.usage()
        outbox.append((ticket, TokenEvent(text.flush(), None, reason, usage, stop_sequence=text.matched)))
        outbox.append((ticket, END))
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        if slot.ticket is not None:
            slot.ticket.sampler.free()
        slot.ticket, slot.pending, slot.next_token, slot.text, slot.spec, slot.draft = None, [], None, None, None, []

    def _purge_idle(self) -> bool:
        """Drops the cells that idle slots keep for a follow-up (llama-server's try_clear_idle_slots);
        whether any were dropped."""
        idle = [slot for slot in self._slots if slot.ticket is None and slot.cached]
        for slot in idle:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.index, -1, -1)
            slot.cached.clear()
        return bool(idle)

    def _decode_failed(self, plan: list, status: int, outbox: list) -> None:
        log.error("llama_decode returned %d for a batch of %d sequences", status, len(plan))
        # The shared cells are full: every running request fails and frees its cells, as in llama-server.
        full = status == 1 and self.kv_unified
        error = ContextFullError() if full else EngineError(f"llama.cpp could not decode (status {status})")
        for slot in [s for s in self._slots if s.ticket is not None] if full else [slot for slot, _ in plan]:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.index, -1, -1)
            slot.cached.clear()
            if slot.ticket is not None:
                outbox.append((slot.ticket, Failure(error)))
                self._release(slot)

    def _hand_over(self, outbox: list[tuple[Ticket, Any]]) -> None:
        """Thread readers get their items directly; asyncio readers get all of a step's items in
        one call per event loop, so the loop wakes once per step, not once per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Ticket, Any]]] = {}
        for ticket, item in outbox:
            if not ticket.post(item):
                by_loop.setdefault(ticket._loop, []).append((ticket, item))  # type: ignore[arg-type]
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: its readers are gone
                for ticket, _ in items:
                    ticket.cancel()

    def _fail_all(self, error: HychatError) -> None:
        outbox = [(s.ticket, Failure(error)) for s in self._slots if s.ticket is not None]
        with self._wake:
            while (ticket := self._waiting.pop()) is not None:
                ticket.sampler.free()
                outbox.append((ticket, Failure(error)))
            self._closing = True
        self._hand_over(outbox)

    def _report(self) -> None:
        # Only changes: metrics calls on every step cost 0.6% of decode speed.
        state = (len(self._waiting), self.busy, self.n_slots)
        if state != self._reported:
            self._reported = state
            self._on_state(*state)


def _slot_state(slot: _Slot) -> SlotState:
    ticket = slot.ticket
    if ticket is None or ticket.cancelled:  # a cancelled ticket's slot counts as free (see submit)
        return SlotState(slot.index, busy=False, n_cached=len(slot.cached))
    return SlotState(
        slot.index,
        busy=True,
        n_cached=len(slot.cached),
        n_prompt=len(ticket.prompt),
        n_prompt_cached=ticket.clock.cached_tokens,
        n_decoded=ticket.clock.completion_tokens,
        max_new_tokens=ticket.max_new_tokens,
        speculative=slot.spec is not None,
    )


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _put_all(items: list[tuple[Ticket, Any]]) -> None:
    for ticket, item in items:
        ticket._events.put_nowait(item)


def _abort_at_exit(ref: weakref.ref[BatchEngine]) -> None:
    engine = ref()
    if engine is not None:
        engine.abort()
