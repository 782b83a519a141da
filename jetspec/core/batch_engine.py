"""`BatchEngine`: speculative decoding of many sequences at once, with continuous batching.

    slots      up to B sequences in flight, each with its own DecodeState, KV cache, drafter and
               verifier (`batch.SequenceParts`); the scorer is shared
    admit      free slots take the next prompts; their prefills (each prompt but its last token, a
               chain) are packed into one forward (up to PREFILL_ROWS rows), then each drafter
               resets and observes its prompt
    step       for every sequence s in flight:
                   proposal_s = drafter_s.propose(state_s, b_s);  tree_s = scorer.build(proposal_s, root_s, b_s)
               the S trees packed end to end: R = sum_s |tree_s| rows, `BatchMeta`
               logits [R, V] = target.forward_batch(rows, meta, caches)              ONE verify forward
               for every s: acc_s = verifier_s.accept(tree_s, logits[rows of s]); commit; observe
    finish     a sequence that reached max_new_tokens or a stop token leaves, reported at once;
               its slot takes the next prompt before the next step

Overlap (`generation.overlap`; "auto", the default: speculative runs of OVERLAP_FROM slots or more):
the slots in two halves (even, odd) whose steps alternate. A step is launched (trees built, forward
and acceptance queued, the copy of its result started) and landed (its one wait, then commit and
observe) later: half A's step is launched, then half B's last step landed and its next one launched,
then A's landed, ... so the device verifies one half while the host drafts, builds and commits the
other. The hidden rows a step's drafters observe are copied at launch (the other half's forward may
reuse a CUDA graph's output buffers before the commit reads them); each half has its own upload and
read-back buffers. Per sequence nothing changes: its rounds are the same calls in the same order.

Row cap: with `max_verify_rows` = C and A sequences in flight, sequence s verifies its root and
b_s = min(budget, C // A - 1) drafts, so a step has at most A * (C // A) <= C rows. C >= B is
required: every sequence verifies at least its root.

Lossless per sequence: a row attends to its own sequence's keys only, and a sequence's drafter,
verifier and cache are its own, so each sequence sees exactly the calls `Pipeline.generate` would
make for it alone (its budget aside, which never changes a lossless output); every other layer
of the target is row-wise. With an exact target (`info.exact`) bit for bit: each row's logits are
its sequence's own (`DecoderTarget.forward_batch`), so batch size cannot change a bit. Acceptance
(`batch_accept.py`) runs on the host, or on the device with one read-back for the whole step where
the verifier can and `generation.accept_on_device` says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from .batch import BatchMeta, SequenceParts
from .batch_records import Finished, LaunchedStep, SequenceInFlight
from .batch_accept import accept_on_host, committed_rows, finish_on_device, start_on_device
from .batch_ahead import draft_ahead_step
from .batch_grow import Grower
from .batch_trees import StepTrees
from .checks import Blame, conforms
from .errors import CapacityError, IncompatibleError, InputError, JetSpecError, PluginError
from .device_proposal import builds_on_device, proposes_on_device
from .frozen_heap import frozen_heap
from .interfaces import (
    Acceptance, AttentionMeta, BatchedKVCache, BatchedTarget, DecodeState, KVCache, ResettableVerifier, TargetOutput,
    DraftsAhead, accepts_batch_on_device, accepts_on_device, extra_pending, observed_layers, rows_kept_ahead,
)
from .on_device import Readback, TreeUpload, to_device
from .results import GenerationStats
from .stops import cut_at_stop, stop_set
from .tree import DraftTree

if TYPE_CHECKING:
    from .pipeline import Pipeline


class BatchEngine(StepTrees):
    def __init__(self, pipe: Pipeline, new_parts: Callable[[], SequenceParts], batch_size: int,
                 max_verify_rows: int | None = None):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if max_verify_rows is not None and max_verify_rows < batch_size:
            raise InputError(f"max_verify_rows ({max_verify_rows}) must be at least batch_size ({batch_size}): "
                             "every sequence verifies at least its root")
        target = pipe.target
        if batch_size > 1 and not isinstance(target, BatchedTarget):
            raise IncompatibleError(f"{pipe.labels['target']} has no batched forward (forward_batch); batch_size > 1 "
                                    "runs with target 'decoder' (or the kit's TinyDecoder); use batch_size 1 for this one")
        problem = target.batch_problem() if batch_size > 1 else None
        if problem:
            raise IncompatibleError(f"{pipe.labels['target']}: {problem}")
        self.pipe, self.batch_size, self.max_verify_rows = pipe, batch_size, max_verify_rows
        self.parts = [new_parts() for _ in range(batch_size)]  # slot -> its own drafter and verifier
        device = target.info.device
        # per half of the slots (`generation.overlap`: two steps in flight), a step's trees end to end in one
        # copy to the device and its one device-to-host copy (device acceptance)
        self._uploads = (TreeUpload(device), TreeUpload(device))
        self._growers = (Grower(device), Grower(device))  # per half: a grown step's staging and tree read-back
        self._readbacks = (Readback(device), Readback(device))
        self._kept: tuple[int, list[KVCache]] | None = None  # (capacity, one cache per slot): `_caches`, kept across runs

    # ------------------------------------------------------------------ the run
    def run(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int | None = None,
            stop_token_ids: Sequence[int] | None = None, speculative: bool = True,
            budget: int | None = None) -> Iterator[Finished]:
        """Generate for every prompt; yields each as it finishes (not in input order)."""
        pipe, gen = self.pipe, self.pipe.config.generation
        max_new = gen.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new}")
        budget = gen.budget if budget is None else budget
        speculative = speculative and budget > 0 and all(p.drafter is not None for p in self.parts)
        stops = stop_set(pipe.target.info, gen.stop_token_ids if stop_token_ids is None else stop_token_ids)
        self._max_new, self._budget, self._stops, self._speculative = max_new, budget if speculative else 0, stops, speculative
        mode, device = gen.accept_on_device, pipe.target.info.device
        self._on_device = (mode == "always" or (mode == "auto" and device.type != "cpu")) and all(
            accepts_on_device(p.verifier) for p in self.parts)  # as `Pipeline` decides it, for every slot
        self._batch_accept = self._on_device and accepts_batch_on_device([p.verifier for p in self.parts])  # one call a step
        # drafters that queue their next round before the host waits for the step's read-back (`DraftsAhead`), as `Pipeline` does
        self._drafts_ahead = self._on_device and speculative and all(isinstance(p.drafter, DraftsAhead) for p in self.parts)
        # drafters that keep a drafted-ahead round's committed rows themselves: the step gathers none for them (`KeepsRowsAhead`)
        self._rows_ahead = self._drafts_ahead and all(rows_kept_ahead(p.drafter) for p in self.parts)
        # trees grown on the device (`batch_grow.py`) where every drafter and the scorer can
        self._grows = self._on_device and speculative and gen.build_on_device is not False and builds_on_device(pipe.scorer) and all(
            proposes_on_device(p.drafter) for p in self.parts)
        self._grow_from = GROW_FROM if gen.build_on_device == "auto" else 1  # sequences a step needs to be grown

        encoded: list[list[int] | Exception] = []
        for p in prompts:
            try:
                encoded.append(self._admissible(pipe.encode(p)))
            except JetSpecError as e:
                encoded.append(e)
        lengths = [len(e) for e in encoded if isinstance(e, list)]
        caches = self._caches(max(lengths) + max_new + self._budget) if lengths else []
        queue = list(range(len(prompts)))[::-1]  # pop() takes the next prompt in input order
        slots: list[SequenceInFlight | None] = [None] * self.batch_size
        self._overlap = self.batch_size > 1 and (gen.overlap is True or (
            gen.overlap == "auto" and speculative and self.batch_size >= OVERLAP_FROM))
        halves = (range(0, self.batch_size, 2), range(1, self.batch_size, 2)) if self._overlap else (range(self.batch_size),)
        in_flight: list[LaunchedStep | None] = [None, None]  # per half: its step queued on the device, not landed yet
        with frozen_heap():  # no full collection of the pre-existing heap stalls the steps (until the run ends or is closed)
            while queue or any(slots):
                for half, mine in enumerate(halves):  # one half: every step; two: while one half's step runs, the other's is made
                    admitted = yield from self._admit_free(mine, queue, encoded, caches, slots)
                    for group in _prefill_groups(admitted):
                        yield from self._prefill(group, caches, slots)
                    active = [slots[i] for i in mine if slots[i] is not None]
                    launched = (yield from self._launch(active, caches, slots, half)) if active else None
                    other, in_flight[1 - half] = in_flight[1 - half], None
                    if other is not None:
                        yield from self._land(other, caches, slots)
                    if not self._overlap and launched is not None:
                        yield from self._land(launched, caches, slots)
                    else:
                        in_flight[half] = launched

    def _admit_free(self, mine: range, queue: list[int], encoded: list, caches: list[KVCache],
                    slots: list[SequenceInFlight | None]) -> Iterator[Finished]:
        """Continuous batching: each free slot of `mine` takes the next prompt (a prompt that failed to
        encode is reported and skipped) -> (generator return) the admitted sequences."""
        admitted: list[SequenceInFlight] = []
        for slot in mine:
            while slots[slot] is None and queue:
                i = queue.pop()
                if isinstance(encoded[i], Exception):
                    yield Finished(i, None, encoded[i], 0.0)
                    continue
                slots[slot] = self._admit(i, slot, encoded[i], caches[slot])
                admitted.append(slots[slot])
        return admitted

    def _admissible(self, ids: list[int]) -> list[int]:
        limit = self.pipe.target.info.max_positions
        if len(ids) + self._max_new + self._budget > limit:
            raise CapacityError(f"prompt ({len(ids)}) + max_new_tokens ({self._max_new}) + budget ({self._budget}) "
                                f"needs {len(ids) + self._max_new + self._budget} positions; the target allows {limit}")
        return ids

    def _caches(self, capacity: int) -> list[KVCache]:
        """One cache per slot: over one shared storage where the cache kind has a batched form
        (`BatchedKVCache`: the paged cache's page pool), else one cache each — kept across runs and
        reset, reallocated only when a run needs more room (as `Pipeline` keeps its one cache): the
        packed forward's CUDA graphs are captured over this storage, so a new one would capture
        them all again. Capacity is rounded up to a multiple of 1024, so that a warm-up and the runs
        after it share one storage (at most 1023 positions a slot more than the run needs: a batch's
        KV is slots x capacity, so not a power of two)."""
        need = capacity + extra_pending(self.pipe.target)
        if self._kept is not None and self._kept[0] >= need:
            for cache in self._kept[1]:
                cache.reset()
            return self._kept[1]
        self._kept = None  # free the old storage first
        limit = self.pipe.target.info.max_positions + extra_pending(self.pipe.target)
        capacity = min(-(-need // 1024) * 1024, max(limit, need))
        first = self.pipe.new_cache(capacity)
        caches = first.sequences(self.batch_size) if isinstance(first, BatchedKVCache) else (
            [first] + [self.pipe.new_cache(capacity) for _ in range(self.batch_size - 1)])
        self._kept = (capacity, caches)
        return caches

    def _admit(self, index: int, slot: int, ids: list[int], cache: KVCache) -> SequenceInFlight:
        seq = SequenceInFlight(index, slot, DecodeState(tokens=list(ids), prompt_len=len(ids)), GenerationStats(), time.perf_counter())
        cache.reset()
        verifier = self.parts[slot].verifier
        if conforms(verifier, ResettableVerifier):  # a sampling verifier re-seeds here
            verifier.reset(seq.state)
        return seq

    def _prefill(self, group: list[SequenceInFlight], caches: list[KVCache], slots: list[SequenceInFlight | None]) -> Iterator[Finished]:
        """The prompts of newly admitted sequences, each but its last token (its first root), as
        chains packed into ONE forward; then each drafter starts and observes its prompt's hidden
        states, as `Pipeline._prefill` does for one sequence."""
        pipe, t0 = self.pipe, time.perf_counter()
        device = pipe.target.info.device
        layers = observed_layers(self.parts[group[0].slot].drafter) if self._speculative else ()
        hidden: dict[int, torch.Tensor | None] = {}  # slot -> its prompt's hidden states [n, k, H]
        chains = []
        for seq in group:
            if seq.state.prompt_len > 1:
                try:
                    caches[seq.slot].begin(seq.state.prompt_len - 1)
                    chains.append(seq)
                except JetSpecError as e:  # a shared page pool may be full
                    yield self._finish(seq, caches, slots, "error", e)
        if chains:
            meta = BatchMeta.pack([AttentionMeta.for_chain(s.state.prompt_len - 1, 0, device) for s in chains])
            tokens = torch.tensor([t for s in chains for t in s.state.tokens[: s.state.prompt_len - 1]])  # [R]
            tokens = to_device(tokens, device)  # behind the other half's step, not waiting for it
            try:
                out = self._forward(tokens, meta, [caches[s.slot] for s in chains], layers)
            except JetSpecError as e:
                for seq in chains:
                    yield self._finish(seq, caches, slots, "error", e)
                return
            for k, seq in enumerate(chains):
                caches[seq.slot].commit(range(seq.state.prompt_len - 1))
                hidden[seq.slot] = None if out.hidden is None else out.hidden[meta.rows(k)]
        alive = [seq for seq in group if slots[seq.slot] is seq]
        for seq in alive:
            seq.stats.seconds["prefill"] += (time.perf_counter() - t0) / len(alive)
            if not self._speculative:
                continue
            drafter = self.parts[seq.slot].drafter
            try:
                with Blame(pipe.labels["drafter"], "in reset"):
                    drafter.reset(seq.state)
                with Blame(pipe.labels["drafter"], "in observe"):
                    drafter.observe(seq.state, hidden.get(seq.slot))
            except JetSpecError as e:
                yield self._finish(seq, caches, slots, "error", e)

    # ------------------------------------------------------------------ one step
    def _launch(self, active: list[SequenceInFlight], caches: list[KVCache], slots: list[SequenceInFlight | None],
                half: int) -> Iterator[Finished]:
        """Draft and build per sequence, verify all in one forward, and queue the acceptance on the
        device (the host path decides it here) -> (generator return) the step for `_land`, or None."""
        pipe, clock = self.pipe, time.perf_counter
        share = self.max_verify_rows // len(active) if self.max_verify_rows else None  # rows per sequence
        budget = self._budget if share is None else min(self._budget, share - 1)
        grows = self._grows and budget >= 1 and len(active) >= self._grow_from
        made = yield from (self._grown if grows else self._built)(active, caches, slots, budget, half)
        if made is None:
            return None
        trees, tokens, meta, dtrees, t0 = made
        layers = observed_layers(self.parts[trees[0][0].slot].drafter) if self._speculative else ()
        try:
            out = self._forward(tokens, meta, [caches[seq.slot] for seq, _ in trees], layers)
        except JetSpecError as e:  # the target failed: every sequence of the step fails with it
            for seq, _ in trees:
                yield self._finish(seq, caches, slots, "error", e)
            return None
        t1 = clock()
        # with two steps in flight the other half's forward may reuse this one's output buffers (a CUDA
        # graph's) before `_land` reads the hidden rows: copied now, in stream order
        hidden = None if self._rows_ahead else out.hidden  # [R, k, H] the rows `_land` gathers for the drafters' observe
        hidden = hidden.clone() if self._overlap and hidden is not None else hidden
        launched = LaunchedStep(trees, meta, dtrees, hidden, self._readbacks[half], t0, t1,
                                grower=self._growers[half] if trees[0][1] is None else None)
        verifiers = [self.parts[seq.slot].verifier for seq, _ in trees]
        states, mine = [seq.state for seq, _ in trees], [caches[seq.slot] for seq, _ in trees]
        who = pipe.labels["verifier"]
        if self._on_device:
            def ahead(made: list[tuple[int, torch.Tensor]]) -> None:  # the next drafts, queued behind the read-back
                drafters = [self.parts[trees[s][0].slot].drafter for s, _ in made]
                rows = [None if out.hidden is None else out.hidden[meta.rows(s)] for s, _ in made]
                launched.failed.update(draft_ahead_step(drafters, rows, made, budget, pipe.labels["drafter"]))
            launched.paths = start_on_device(verifiers, dtrees, out.logits, meta, states, mine,
                                             launched.readback, who, self._batch_accept, ahead if self._drafts_ahead else None)
        else:
            launched.accepted = accept_on_host(verifiers, [t for _, t in trees], out.logits, meta, states, who,
                                               pipe.target.info.vocab_size)
        launched.queued = clock() - t1
        return launched

    def _land(self, step: LaunchedStep, caches: list[KVCache], slots: list[SequenceInFlight | None]) -> Iterator[Finished]:
        """The step's acceptance read back (its one wait) and checked, then commit per sequence."""
        clock, trees = time.perf_counter, step.trees
        backs = [step.readback] + ([step.grower.readback] if step.grower is not None else [])  # the step's read-backs
        t2, waited = clock(), sum(b.waited for b in backs)
        accepted = step.accepted
        if step.grower is not None:  # grown on the device: the trees come back with the step, checked
            trees = step.trees = self._read_trees(step, caches)
        if accepted is None:
            accepted = finish_on_device(step.paths, [t for _, t in trees], step.dtrees, step.readback,
                                        self.pipe.labels["verifier"], self.pipe.target.info.vocab_size)
            accepted = [(step.failed[s], None) if s in step.failed else a for s, a in enumerate(accepted)]
        wait = sum(b.waited for b in backs) - waited  # blocked on the device's read-backs
        verify = (step.t1 - step.t0) / len(trees)  # shared work, split evenly
        accept = (step.queued + clock() - t2 - wait) / len(trees)
        hidden = committed_rows(step.hidden if self._speculative else None, step.meta, [acc for acc, _ in accepted])
        for s, ((seq, tree), (acc, _)) in enumerate(zip(trees, accepted)):
            seq.stats.seconds["verify"] += verify
            seq.stats.seconds["accept"] += accept
            seq.stats.seconds["wait"] += wait / len(trees)
            try:
                if isinstance(acc, JetSpecError):
                    raise acc
                stopped = self._commit(seq, tree, acc, hidden[s], caches[seq.slot])
            except JetSpecError as e:
                yield self._finish(seq, caches, slots, "error", e)
                continue
            if stopped != "length" or len(seq.state.generated) >= self._max_new:
                yield self._finish(seq, caches, slots, stopped, None)

    def _forward(self, tokens: torch.Tensor, meta: BatchMeta, caches: list[KVCache], layers: tuple[int, ...]) -> TargetOutput:
        """target.forward_batch, its output's shapes checked."""
        who, r, vocab = self.pipe.labels["target"], tokens.numel(), self.pipe.target.info.vocab_size
        target = self.pipe.target
        with Blame(who, "in forward_batch"):
            if conforms(target, BatchedTarget):
                out = target.forward_batch(tokens, meta, caches, layers)
            else:  # batch_size 1: the one sequence's own forward
                out = target.forward(tokens, meta.seqs[0], caches[0], layers)
        if not isinstance(out, TargetOutput):
            raise PluginError(f"{who} returned {type(out).__name__} from forward_batch; expected a TargetOutput")
        if out.logits.dim() != 2 or out.logits.shape[0] != r or out.logits.shape[1] < vocab:
            raise PluginError(f"{who} returned logits of shape {tuple(out.logits.shape)} for {r} packed rows; expected [{r}, {vocab}]")
        if layers and (out.hidden is None or out.hidden.shape[:2] != (r, len(layers))):
            got = None if out.hidden is None else tuple(out.hidden.shape)
            raise PluginError(f"{who} returned hidden states of shape {got} for {r} rows and {len(layers)} layers")
        return out

    def _commit(self, seq: SequenceInFlight, tree: DraftTree, acc: Acceptance, hidden: torch.Tensor | None,
                cache: KVCache) -> str:
        """Commit `acc`, extend the state, let the drafter observe the committed nodes' hidden
        states (hidden [k, k_layers, H]: the path's rows, `committed_rows`) -> why it stops ("length": goes on)."""
        pipe, t0 = self.pipe, time.perf_counter()
        cache.commit(acc.path)
        room = self._max_new - len(seq.state.generated)
        new, stopped = cut_at_stop(acc.new_tokens(tree)[:room], self._stops, pipe.target.info)
        seq.state.tokens.extend(new)
        if self._speculative and stopped == "length" and len(seq.state.generated) < self._max_new:
            with Blame(pipe.labels["drafter"], "in observe"):
                self.parts[seq.slot].drafter.observe(seq.state, hidden)
        seq.stats.record_round(len(new), acc.accepted_drafts, tree.budget)
        seq.stats.seconds["commit"] += time.perf_counter() - t0
        return stopped

    def _finish(self, seq: SequenceInFlight, caches: list[KVCache], slots: list[SequenceInFlight | None], stopped: str,
                error: Exception | None) -> Finished:
        """Report `seq` and free its slot (its cache's storage goes back to the pool)."""
        caches[seq.slot].reset()
        if slots[seq.slot] is seq:
            slots[seq.slot] = None
        result = self.pipe._result(seq.state, seq.stats, seq.state.tokens[: seq.state.prompt_len], stopped)
        if error is not None:
            error.partial = result  # nothing produced is lost
        return Finished(seq.index, result, error, time.perf_counter() - seq.started)


# `generation.build_on_device = "auto"`: a step's trees are grown on the device from this many sequences
# on, built on the host below it: grown steps won at 16 and 32 sequences a step on each GPU measured, and at 8 since the
# pooled drafts stopped costing grown steps more (lost at 4 and at 8 before: bench/RESULTS.md, where it names
# `build_on_device = "auto"`).
GROW_FROM = 8

# `generation.overlap = "auto"`: a speculative run overlaps its two halves from this many slots on (halves of 16
# sequences, each grown on the device: GROW_FROM); speculative runs gained from overlap at 32 slots on both GPUs measured
# and at 64 on the one that ran it, and lost at 8 (bench/RESULTS.md, where it names `overlap = "auto"`). Plain decoding
# is not overlapped by default: its measured gains and losses were mixed.
OVERLAP_FROM = 32

PREFILL_ROWS = 4096  # prompt rows one packed prefill takes at most: its logits are [rows, V]


def _prefill_groups(admitted: list[SequenceInFlight]) -> list[list[SequenceInFlight]]:
    """The admitted sequences in order, cut into groups of at most PREFILL_ROWS prompt rows (a
    longer prompt alone)."""
    groups: list[list[SequenceInFlight]] = []
    rows = 0
    for seq in admitted:
        n = seq.state.prompt_len - 1
        if not groups or rows + n > PREFILL_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(seq)
        rows += n
    return groups
