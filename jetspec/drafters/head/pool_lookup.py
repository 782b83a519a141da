"""`PooledLookup`: the prompt lookup of a `ContextPool`'s slots on the device (`HeadOptions.lookup_on_device`).
Each slot's token history lives there and grows in the pooled step's job, from the acceptance results
(`packed`'s committed tokens), so the host never builds, packs or uploads a trie: every slot's trie is
made by `lookup_tries` (`drafters/lookup_device.py`: the host lookup's trie, entry for entry) in one
graph per (history width, depth).

    history   [S, W + 1] int64: slot s's tokens at 0 .. length_s - 1; column W takes the writes of nothing
    length    [S] int64
    commit    [S, A] int64, count [S]: a step's committed tokens per slot and how many (0: not in the step)
    job       history[s, length_s + a] = commit[s, a] for a < count_s;  length += count;  the tries of every slot
    tries     tokens, parents, depths [S, M D] int64, logp [S, M D] float32: the job's static outputs

A member knows its history is current when the host saw every token the job appended be committed
(`LookupHistory`, updated at its `observe`); otherwise (a sequence's first round, a round its
slot's job did not append) its tokens are written from the host first (`write`), and the job runs with
no commits. Every replay remakes every slot's trie from its history, so a slot's trie is always its
current history's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ...core.cuda_graphs import GraphSet
from ...core.device_proposal import DeviceTrie
from ...core.on_device import accepted_count, to_device
from ..lookup_device import edge_tables, log_ratios, lookup_tries
from ..ngram import NgramDrafter
from .graphs import APPEND_ROWS

if TYPE_CHECKING:
    from ...core.interfaces import DecodeState
    from .pool import ContextPool


class LookupHistory:
    """A member's side of the lookup on the device: how many of its sequence's tokens its pool slot's
    history holds (`length`; None: unknown, written at the next proposal), whether the last pooled job
    appended the round's tokens (`pending`: its `observe` then learns how many the round committed), and
    the one-slot lookup it uses while in no pool."""

    def __init__(self):
        self.length: int | None = None
        self.pending = False
        self._own: PooledLookup | None = None

    def reset(self) -> None:
        self.length, self.pending = None, False

    def observed(self, tokens: int) -> None:
        """The round is committed, `tokens` long: the history is current where the job appended all of it."""
        self.length = tokens if self.pending and self.length is not None else None
        self.pending = False

    def trie(self, lookup: NgramDrafter, pool: ContextPool | None, slot: int | None, state: DecodeState, budget: int,
             device: torch.device) -> DeviceTrie:
        """This round's lookup trie on the device: its pool's slot (the history written first where it is not
        current), else from a one-slot lookup of its own, written each time."""
        depth = min(lookup.options.max_depth, max(budget, 1))
        pooled = None if pool is None else pool.lookup
        if pooled is None:
            self._own = self._own or PooledLookup(lookup, 1, 1024, device, graphs=False)
            self._own.write(0, state.tokens, depth)
            return self._own.trie(0)
        if self.length != len(state.tokens) or pooled.depth != depth or not pooled.rows:
            pooled.write(slot, state.tokens, depth)
            self.length = len(state.tokens)
        return pooled.trie(slot)


class PooledLookup:
    def __init__(self, lookup: NgramDrafter, slots: int, width: int, device: torch.device, graphs: bool):
        self.options = lookup.options
        self.ratios = log_ratios(self.options.max_matches, device)  # [M + 1, M + 1]
        self.edges = None if lookup.calibration is None else edge_tables(lookup.calibration, self.options.n_max, device)
        self.history = torch.zeros(slots, width + 1, dtype=torch.int64, device=device)  # [S, W + 1]
        self.length = torch.zeros(slots, dtype=torch.int64, device=device)  # [S]
        self.commit = torch.zeros(slots, APPEND_ROWS, dtype=torch.int64, device=device)  # [S, A]
        self.count = torch.zeros(slots, dtype=torch.int64, device=device)  # [S]
        self.graphs = GraphSet() if graphs else None
        self.rows: list[tuple[torch.Tensor, ...]] = []  # the last job's tries, per slot its four rows (none before a job)
        self.depth = 0  # their depth D

    def reserve(self, width: int) -> None:
        """Room for `width` tokens in every slot's history (doubling, the histories kept; new graphs)."""
        if width <= self.history.shape[1] - 1:
            return
        w = self.history.shape[1] - 1
        while w < width:
            w *= 2
        grown = self.history.new_zeros(self.history.shape[0], w + 1)
        grown[:, : self.history.shape[1] - 1] = self.history[:, :-1]
        self.history = grown
        if self.graphs is not None:
            self.graphs.clear()

    def step(self, slots: np.ndarray, flat: torch.Tensor, poff: np.ndarray, d1: np.ndarray, depth: int) -> None:
        """The pooled step's job: slots [P] in it, flat its acceptance results end to end (peer i's
        [2 D_i + 3] from poff_i: k, path, tokens; d1 = D_i + 1 <= A) -> append each slot's committed
        tokens flat[poff_i + D_i + 2 .. + k_i - 1] (k_i = min(max(flat[poff_i], 1), D_i + 1)), then the tries."""
        a = APPEND_ROWS
        at = poff[:, None] + d1[:, None] + 1 + np.minimum(np.arange(a)[None], d1[:, None] - 1)  # [P, A] token slots
        up = to_device(torch.from_numpy(np.concatenate([at.ravel(), poff, d1, slots]).astype(np.int64)), flat.device)
        p = len(slots)
        at_, (poff_, d1_, slots_) = up[: p * a].view(p, a), up[p * a :].view(3, p)
        self.count.zero_()
        self.commit.index_copy_(0, slots_, flat[at_])
        self.count.index_copy_(0, slots_, accepted_count(flat[poff_], d1_))
        self._run(depth)

    def write(self, slot: int, tokens: list[int], depth: int) -> None:
        """Slot `slot`'s history from the host (its sequence's tokens), then the tries (no commits)."""
        self.reserve(len(tokens) + APPEND_ROWS)
        n = len(tokens)
        self.history[slot, :n].copy_(to_device(torch.tensor(tokens, dtype=torch.int64), self.history.device))
        self.length[slot : slot + 1].fill_(n)
        self.count.zero_()
        self._run(depth)

    def trie(self, slot: int) -> DeviceTrie:
        """Slot `slot`'s trie of the last job (views: valid until the next job, later in stream order)."""
        tokens, parents, depths, logp = self.rows[slot]
        return DeviceTrie(tokens, parents, logp, depths, self.depth)

    def _run(self, depth: int) -> None:
        job = lambda: self._job(depth)  # noqa: E731
        tries = job() if self.graphs is None else self.graphs.replay((self.history.shape[1], depth), job)
        self.rows = list(zip(*(x.unbind(0) for x in tries)))  # per slot its four rows: 4 views made per job, not 4 per slot
        self.depth = depth

    def _job(self, depth: int) -> tuple[torch.Tensor, ...]:
        """Append the commits, then every slot's trie (over the static buffers: what a capture records)."""
        w = self.history.shape[1] - 1
        a = torch.arange(APPEND_ROWS, device=self.history.device)
        at = torch.where(a[None] < self.count[:, None], self.length[:, None] + a[None], w).clamp(max=w)  # [S, A]; W: nothing
        self.history.scatter_(1, at, self.commit)
        self.length.add_(self.count)
        return lookup_tries(self.history[:, :w], self.length, self.options, depth, self.ratios, self.edges)
