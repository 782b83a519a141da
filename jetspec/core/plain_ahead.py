"""Plain decoding with each step's forward queued before the host reads the step before.

A plain step's input is the token the step before produced, and the device has it before the
host does (in the packed result of `accept_on_device`). So the forward of step k + 1 is queued,
its root token written on the device from step k's packed bonus, before the host waits for step
k's read-back: the host's work for a step (pending slot, tree upload, the forward's launch) runs
while the device computes the step before, instead of the device idling while the host works.

    host    F(0) A(0) | F(1) wait(0) A(1) | F(2) wait(1) A(2) | ...
    device  F(0) A(0)   F(1)  ......  A(1)   F(2)  ......  A(2)

F(k)     begin one pending slot; upload the root-only tree at T + k (its token: the host's for
         k = 0, else A(k-1)'s bonus, copied on the device, clamped into the vocabulary so that a
         wrong verifier fails its check below, not an embedding lookup); the forward.
A(k)     the verifier's `accept_on_device`, called once the host has read token k - 1 (it sees the
         state it always sees); commit of the root (a root-only tree's path is [0], whatever its
         token); the read-back queued.
wait(k)  the read-back of A(k) -> token k, checked like every round's acceptance, cut at a stop.
A step queued past the last token is never read: its pending slot is dropped by the cache's next
`begin` or `reset`. Stream order keeps every buffer safe: A(k) reads F(k)'s logits and the upload
block before F(k + 1) (queued after A(k)) overwrites them.

Tokens, stats (one round per token) and errors are the step-at-a-time loop's
(`tests/test_plain_ahead.py`); `generation.plain_ahead = false` turns it off.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch

from .checks import check_acceptance
from .interfaces import Acceptance, AttentionMeta, DecodeState, KVCache
from .on_device import DeviceTree, unpack
from .results import GenerationStats
from .stops import cut_at_stop
from .tree import DraftTree

if TYPE_CHECKING:
    from .interfaces import TargetOutput
    from .pipeline import Pipeline


def plain_ahead(pipe: Pipeline, state: DecodeState, cache: KVCache, max_new: int, stops: set[int],
                stats: GenerationStats, on_tokens: Callable[[list[int]], None] | None) -> str:
    """Plain decoding of up to `max_new` tokens after the prefill -> why it stopped ("length":
    max_new reached). Needs the device path (the verifier accepts on the device), one process."""
    clock, vocab, info = time.perf_counter, pipe.target.info.vocab_size, pipe.target.info

    def forward(root: int | torch.Tensor) -> tuple[DeviceTree, TargetOutput]:
        """F: the step at T = cache.committed, its root token from the host (int) or the device ([1])."""
        prefix = cache.committed
        cache.begin(1)
        dtree = pipe._upload(DraftTree.root_only(root if isinstance(root, int) else 0), prefix)
        if not isinstance(root, int):
            torch.clamp(root, 0, vocab - 1, out=dtree.tokens)  # [1] on the device: one launch
        meta = AttentionMeta(prefix_len=prefix, positions=dtree.positions, subtree_sizes=dtree.subtree_sizes)
        return dtree, pipe._forward(dtree.tokens, meta, cache, ())

    def accept(step: tuple[DeviceTree, TargetOutput]) -> torch.Tensor:
        """A: packed [3] = (1, 0, token) for a root-only tree, queued; the root committed; the read-back queued."""
        packed = pipe._packed(step[0], step[1].logits, state)
        cache.commit([0])
        pipe._readback.start(packed)
        return packed

    root = state.tokens[-1]
    t0 = clock()
    step = forward(root)
    t1 = clock()
    packed = accept(step)
    stats.seconds["verify"] += t1 - t0
    stats.seconds["accept"] += clock() - t1
    while True:
        t0 = clock()
        generated = len(state.tokens) - state.prompt_len
        step = forward(packed[2:3]) if generated + 1 < max_new else None  # token k + 1 is wanted after token k
        t1, waited = clock(), pipe._readback.waited
        path, tokens = unpack(pipe._readback.wait())
        t2, wait = clock(), pipe._readback.waited - waited
        tree = DraftTree.root_only(root)
        acc = check_acceptance(Acceptance(path=path, bonus=tokens[-1] if tokens else -1), tree, vocab, pipe.labels["verifier"])
        new, stopped = cut_at_stop(acc.new_tokens(tree), stops, info)
        state.tokens.extend(new)
        stats.record_round(len(new), acc.accepted_drafts, tree.budget)
        if on_tokens:
            on_tokens(new)
        t3 = clock()
        if step is not None and stopped == "length":
            root = new[-1]
            packed = accept(step)
        for phase, dt in (("verify", t1 - t0), ("accept", t2 - t1 - wait + clock() - t3), ("wait", wait), ("commit", t3 - t2)):
            stats.seconds[phase] += dt
        if step is None or stopped != "length":
            return stopped
