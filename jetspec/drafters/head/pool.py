"""`ContextPool`: the context caches of a batch's head drafters in one buffer per head layer, so that
a batched step's drafters append and draft ahead in ONE job (`HeadDrafter.draft_ahead_together`)
instead of one per sequence — on a GPU one CUDA graph of ~100 small kernels per step, not S of them.

    buffers   per head layer k, v [S, capacity, Hkv, D]; slot s's rows are member s's ContextCache
              (`ContextCache.bind`: its buffers are views of slot s), so its own observe, append
              and draft read and write the pool; growing one grows all (`reserve`, doubling)
    job       for every slot s (static inputs hidden [S, A, k, H], start [S], root [S], anchor [S]):
                  append  the fused context K/V of hidden[s] at rows start_s .. start_s + A - 1
                  draft   inputs [root_s, MASK x (B - 1)] at positions anchor_s + 0 .. B - 1 over
                          slot s's keys t < anchor_s -> (logp, tokens) [S, depths, k], top-k of q_d
              A = APPEND_ROWS: a member drafting ahead has its accepted path's D + 1 rows first; a
              member not in the step (its sequence ended, or it is the other half of an overlapped
              batch) gets its own length as start and anchor and its own last hidden rows: its rows
              past `length` take finite values, which ContextCache's invariant allows, and rows it
              appended ahead are written again as they were
    one       a member's own draft (its sequence's first round, a round not drafted ahead: `draft_one`),
              from one graph for every slot with the slot index a static input, not a graph per member
    drafts    to a host buffer of the job's own, so a member's queued draft is never overwritten by a
              later job it is not in (the other half's, with overlap)
    inputs    the static inputs above from the step's acceptance results (`pool_fill.py`): on CUDA by the
              first kernel of the job's own graph, over static copies of the results and the trees' hidden
              rows (`_staged`, grown on demand) and one upload of the step's integers — the host launches no
              kernel for them; elsewhere by torch ops before the job (`_fill_torch`, the reference)

Per member this is what its own `draft_ahead` does (append_ahead, then the draft from the bonus
token at anchor length + k), up to float rounding (the pool's capacity may be larger than the
member's own, and a batched forward may reduce in another order): the drafts feed a lossless
verifier, so rounding changes no output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ...core.cuda_graphs import GraphSet
from ...core.on_device import accepted_count, fused, pinned, to_device
from .graphs import APPEND_ROWS
from .pool_lookup import PooledLookup

if TYPE_CHECKING:
    from .calibration import CalibratedDrafts, CalibratedMarginals, HeadCalibration
    from .drafter import HeadDrafter


class ContextPool:
    def __init__(self, members: list[HeadDrafter]):
        caches = [m.cache for m in members]
        first = caches[0]
        self.members = members
        self.slot = {id(m): s for s, m in enumerate(members)}
        self.capacity = max(c.capacity for c in caches)
        self.version = max(c.version for c in caches) + 1
        s, shape, dev, dtype = len(caches), first._shape, first._device, first._dtype
        zeros = lambda: torch.zeros(s, self.capacity, *shape, dtype=dtype, device=dev)  # noqa: E731
        self._k = [zeros() for _ in first._k]  # per head layer [S, capacity, Hkv, D]
        self._v = [zeros() for _ in first._v]
        for i, c in enumerate(caches):  # every row (rows past length too: finite, as the invariant wants)
            for pool, own in zip(self._k + self._v, c._k + c._v):
                pool[i, : own.shape[0]].copy_(own)
        self._bind(made=True)
        k = len(members[0].hidden_layers)
        h = members[0].config.hidden_size
        self.hidden = torch.zeros(s, APPEND_ROWS, k, h, dtype=dtype, device=dev)  # [S, A, k, H] static input
        self.start = torch.zeros(s, dtype=torch.int64, device=dev)  # [S]
        self.root = torch.zeros(s, dtype=torch.int64, device=dev)  # [S]
        self.anchor = torch.zeros(s, dtype=torch.int64, device=dev)  # [S]
        self.one = torch.zeros(3, dtype=torch.int64, device=dev)  # [3] a one-slot draft's static slot, root, anchor
        # the filled job's (CUDA) static inputs, grown on demand: its integers, the step's results and hidden rows
        self.ints = torch.zeros(6 * s, dtype=torch.int64, device=dev)  # [6 S] `pool_fill.fill_ints`, per-peer arrays S long
        self.flat_in = torch.zeros(s * 64, dtype=torch.int64, device=dev)  # [F] >= sum 2 D_i + 3
        self.rows_in = torch.zeros(s * 64, k, h, dtype=dtype, device=dev)  # [R, k, H], R >= sum N_i
        self.one_rows = torch.zeros(APPEND_ROWS, k, h, dtype=dtype, device=dev)  # [L, k, H] `append_one`'s static rows (grown)
        self.one_at = torch.zeros(2, dtype=torch.int64, device=dev)  # [2] its static slot and start
        self.graphs = GraphSet() if members[0].graphs is not None else None
        m = members[0]  # the slots' prompt lookup on the device (`pool_lookup.py`), histories written at their next proposal
        self.lookup = PooledLookup(m.lookup, s, self.capacity + APPEND_ROWS, dev, self.graphs is not None) if (
            m.options.lookup_on_device and m.lookup is not None) else None
        for m in members:
            m.lookup_history.reset()

    @staticmethod
    def of(members: list[HeadDrafter]) -> ContextPool | None:
        """The pool that holds every member, else one made now for them (None: a member twice). A
        new pool copies its members' contexts and takes them out of their old pools (members of
        several pools: a batch run as one after its halves ran overlapped, each half in a pool)."""
        if len({id(m) for m in members}) != len(members):
            return None
        pools = {id(m.cache.pool): m.cache.pool for m in members}
        pool = next(iter(pools.values())) if len(pools) == 1 else None
        if pool is None:
            pool = ContextPool(members)
        return pool if all(id(m) in pool.slot for m in members) else None

    def _bind(self, made: bool = False) -> None:
        """Each member's cache onto its slot: every member when the pool is made, later only those
        still its own (a member moved to a newer pool, `of`, stays there)."""
        for i, m in enumerate(self.members):
            if made or m.cache.pool is self:
                m.cache.pool = self
                m.cache.bind([k[i] for k in self._k], [v[i] for v in self._v], self.version)

    def buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per head layer (k, v) [S, capacity, Hkv, D]."""
        return list(zip(self._k, self._v))

    def reserve(self, rows: int) -> None:
        """Room for `rows` rows in every slot (doubling; every member's version moves with the pool's)."""
        if rows <= self.capacity:
            return
        cap = self.capacity
        while cap < rows:
            cap *= 2
        grow = lambda t: torch.cat([t, t.new_zeros(t.shape[0], cap - t.shape[1], *t.shape[2:])], dim=1)  # noqa: E731
        self._k, self._v = [grow(t) for t in self._k], [grow(t) for t in self._v]
        self.capacity, self.version = cap, self.version + 1
        self._bind()

    @torch.no_grad()
    def draft_ahead(self, peers: list[HeadDrafter], hidden: list[torch.Tensor], packed: list[torch.Tensor],
                    depths: int, budget: int) -> None:
        """Each peer's `draft_ahead(hidden[i], packed[i], budget)` in one job. packed[i] [2 D_i + 3]
        int64 (`core/on_device.py`): [k, path slots 0..D_i, tokens 0..D_i]. With the lookup on the
        device, its job too (`PooledLookup.step`)."""
        dev, a = self.start.device, APPEND_ROWS
        starts = [m.cache.length for m in self.members]
        self.reserve(max(starts) + a)  # every slot writes A rows at its start
        # the static inputs from the step's results (`pool_fill.py`: the math): the index arithmetic on the host, sent
        # in ONE copy; the device gathers what only it holds, the results `flat` and the trees' hidden `rows`
        p, d1 = len(peers), np.array([(x.numel() - 1) // 2 for x in packed])  # [P] D_i + 1
        n = np.array([h.shape[0] for h in hidden])  # [P] N_i
        poff = np.cumsum([0] + [x.numel() for x in packed[:-1]])  # [P]
        slots = np.array([self.slot[id(m)] for m in peers])  # [P]
        if fused(packed[0]):  # CUDA: the fill is the job graph's first kernel, over static copies of its inputs
            flat = self._staged(packed, hidden)  # [sum 2 D_i + 3]: a view of the static results
            peer_of = np.full(len(self.members), -1)
            peer_of[slots] = np.arange(p)
            from .pool_fill import fill_ints  # imports triton

            ints = fill_ints(peer_of, np.asarray(starts), poff, d1, n, stride=len(self.members))  # [6 S]
            self.ints.copy_(pinned(torch.from_numpy(ints), dev), non_blocking=True)
            job, key = (lambda: self._filled_job(peers[0], depths)), (self.version, depths, "filled", *self._staged_room())
        else:
            flat, rows = torch.cat(packed), torch.cat(hidden)  # [sum 2 D_i + 3], [sum N_i, k, H]
            self._fill_torch(flat, rows, poff, d1, n, slots, starts)
            job, key = (lambda: self._job(peers[0], depths)), (self.version, depths)
        if self.graphs is None:
            both, ids = job()
        else:
            if key not in self.graphs:  # graphs of buffers that no longer exist
                self.graphs.drop(lambda k: k[0] != self.version or (k[2:3] == ("filled",) and k[3:] != key[3:]))
            both, ids = (x.clone() for x in self.graphs.replay(key, job))  # this job's own: a later
            # replay (the other half's) rewrites the graph's outputs before these are read
        host = torch.empty(both.shape, dtype=torch.float32, pin_memory=both.is_cuda)  # this job's own (a cached pinned block)
        host.copy_(both, non_blocking=True)  # behind the job, after the step's read-back: a host reader waits for `ready`
        ready = torch.cuda.Event() if both.is_cuda else None
        if ready is not None:
            ready.record()
        drafts = PooledDrafts(host)
        if self.lookup is not None:  # the committed tokens onto each slot's history, then every slot's trie
            self.lookup.reserve(self.capacity + a)
            self.lookup.step(slots, flat, poff, d1, min(self.lookup.options.max_depth, max(budget, 1)))
            for m, d in zip(peers, d1.tolist()):
                m.lookup_history.pending = d <= a  # its observe learns how many of them the round committed
        hosts, logps, tokens_s = host.unbind(0), both[:, 0].unbind(0), ids.unbind(0)  # per slot, one call each (not 3 S)
        for m, s, d in zip(peers, slots.tolist(), d1.tolist()):  # what each one's own draft_ahead leaves
            m.appended_ahead, m._drafted, m._drafted_ready, m._pooled = (starts[s], d), hosts[s], ready, (drafts, s)
            m._drafted_dev = (logps[s], tokens_s[s])  # [depths, k] each, this job's own tensors: a later job never rewrites them

    def _staged(self, packed: list[torch.Tensor], hidden: list[torch.Tensor]) -> torch.Tensor:
        """The step's results and hidden rows, end to end, copied into the filled job's static inputs
        (grown by doubling where a step needs more: the job's graphs over the old ones are dropped at
        its next replay) -> the results' view, flat [sum 2 D_i + 3] (the hidden rows go to rows_in[:sum N_i])."""
        m, r = sum(x.numel() for x in packed), sum(h.shape[0] for h in hidden)
        if m > self.flat_in.numel():
            self.flat_in = self.flat_in.new_zeros(max(m, 2 * self.flat_in.numel()))
        if r > self.rows_in.shape[0]:
            self.rows_in = self.rows_in.new_zeros(max(r, 2 * self.rows_in.shape[0]), *self.rows_in.shape[1:])
        flat = self.flat_in[:m]
        torch.cat(packed, out=flat)
        torch.cat(hidden, out=self.rows_in[:r])
        return flat

    def _staged_room(self) -> tuple[int, int]:
        """What the filled job's graphs are captured over: the static inputs' sizes (new ones, new graphs)."""
        return self.flat_in.numel(), self.rows_in.shape[0]

    def _filled_job(self, first: HeadDrafter, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The job with its inputs' fill first (`pool_fill.fill`, one kernel; CUDA), all over static buffers."""
        from .pool_fill import fill

        fill(self.ints, self.flat_in, self.rows_in, self.hidden, self.start, self.root, self.anchor, len(self.members))
        return self._job(first, depths)

    def _fill_torch(self, flat: torch.Tensor, rows: torch.Tensor, poff: np.ndarray, d1: np.ndarray, n: np.ndarray,
                    slots: np.ndarray, starts: list[int]) -> None:
        """`pool_fill.fill` in torch operators (the reference; off CUDA):
            path[i, j] = min(max(flat[poff_i + 1 + min(j, D_i)], 0), N_i - 1) + hoff_i     [P, A]
            k_i = min(max(flat[poff_i], 1), D_i + 1);  root_i = flat[poff_i + D_i + 1 + k_i]"""
        p, a = len(slots), APPEND_ROWS
        slot_at = poff[:, None] + 1 + np.minimum(np.arange(a)[None], d1[:, None] - 1)  # [P, A]
        ints = np.concatenate([slot_at.ravel(), poff, d1, n - 1, np.cumsum(n) - n, slots, poff + d1, np.asarray(starts)[slots], starts])
        up = to_device(torch.from_numpy(ints.astype(np.int64)), flat.device)  # [P A + 7 P + S]
        slot_at_, (poff_, d1_, last, hoff, slots_, tokens_at, start_of) = up[: p * a].view(p, a), up[p * a : p * a + 7 * p].view(7, p)
        start = up[p * a + 7 * p :]  # [S] every member's length
        path = torch.minimum(flat[slot_at_].clamp_(min=0), last[:, None]).add_(hoff[:, None])  # [P, A]
        k = accepted_count(flat[poff_], d1_)  # [P]
        self.start.copy_(start)
        self.anchor.copy_(start)  # a member not in the step: its own length (its draft is not read)
        self.hidden.index_copy_(0, slots_, rows.index_select(0, path.flatten()).view(p, a, *rows.shape[1:]))
        self.root.index_copy_(0, slots_, flat[tokens_at + k])
        self.anchor.index_copy_(0, slots_, start_of + k)

    def append_one(self, member: HeadDrafter, rows: torch.Tensor, start: int) -> bool:
        """`member`'s context append of rows [n, k, H] at rows start .. start + n - 1 (a round's, or its
        sequence's prompt) from ONE graph per buffer version and row bucket L (`APPEND_BUCKETS`, the least
        L >= n) whichever slot asks, as `draft_one` drafts: the rows padded to L with whatever the static
        buffer held, so rows start + n .. start + L - 1 get finite values, which rows past a context's
        length may hold -> False (nothing done) without graphs or above the largest bucket: the caller
        appends otherwise. Eagerly a prompt's append is tens of launches (~1 ms of host on a lent H100),
        and graphs of each member's own would be captured per member."""
        n = rows.shape[0]
        if self.graphs is None or n > APPEND_BUCKETS[-1]:
            return False
        bucket = next(b for b in APPEND_BUCKETS if n <= b)
        self.reserve(start + bucket)  # room for the padded write; may bump the version
        if bucket > self.one_rows.shape[0]:  # a longer append than any before: a larger static buffer, its graphs anew
            self.one_rows = self.one_rows.new_zeros(bucket, *self.one_rows.shape[1:])
            self.graphs.drop(lambda key: key[1:2] == ("append",))
        self.one_rows[:n].copy_(rows)
        self.one_at[:1].fill_(self.slot[id(member)])
        self.one_at[1:].fill_(start)
        if (self.version, "append", bucket) not in self.graphs:
            self.graphs.drop(lambda key: key[0] != self.version)  # graphs of buffers that no longer exist
        self.graphs.replay((self.version, "append", bucket), lambda: self._append_one(bucket))
        return True

    def _append_one(self, bucket: int) -> None:
        """The context K/V of the static rows [:bucket] into the static slot's rows start .. start + bucket - 1."""
        slot, start = self.one_at[:1], self.one_at[1:]  # [1] each
        rows, kv = self.members[0].context_rows(self.one_rows[None, :bucket], start)  # [1, L], (k, v) [1, L, Hkv, D] per layer
        for (k_buf, v_buf), (k, v) in zip(self.buffers(), kv):
            k_buf.index_put_((slot.expand(bucket), rows[0]), k[0].to(k_buf.dtype))
            v_buf.index_put_((slot.expand(bucket), rows[0]), v[0].to(v_buf.dtype))

    def draft_one(self, member: HeadDrafter, root: int | torch.Tensor, anchor: int | torch.Tensor,
                  depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`member`'s own one-forward draft (a sequence's first round, a round not drafted ahead) from ONE
        graph of the pool per buffer version and depth count, whichever slot asks: the static slot index
        picks the member's rows of the buffers (a copy of [1, capacity, Hkv, D] per head layer), so a
        batch does not capture a graph per member (and again per member at each new pool version).
        root, anchor: host integers, or [1] int64 on the device -> (logp, tokens) [depths, k], the
        caller's own copies (the next slot's draft replays the same graph)."""
        values = (self.slot[id(member)], root, anchor)
        for i, value in enumerate(values):
            static = self.one[i : i + 1]
            static.copy_(value) if isinstance(value, torch.Tensor) else static.fill_(value)
        if self.graphs is None:
            logp, tokens = self._one(member, depths)
        else:
            if (self.version, depths, "one") not in self.graphs:
                self.graphs.drop(lambda key: key[0] != self.version)  # graphs of buffers that no longer exist
            logp, tokens = self.graphs.replay((self.version, depths, "one"), lambda: self._one(member, depths))
        return logp.clone(), tokens.clone()

    def _one(self, member: HeadDrafter, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The draft of the slot in `one[0]` over the static inputs -> [depths, k] each."""
        slot, root, anchor = self.one[:1], self.one[1:2], self.one[2:]  # [1] each
        context = [(k.index_select(0, slot), v.index_select(0, slot)) for k, v in self.buffers()]  # [1, capacity, Hkv, D]
        logp, tokens = member.draft_many(root, anchor, context, depths)  # [1, depths, k]
        return logp[0], tokens[0]

    def _job(self, first: HeadDrafter, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append, then draft, over the static inputs (what a capture records) -> (both, ids): both
        [S, 2, depths, k] float32 (log-probs, token ids), ids [S, depths, k] int64."""
        s, a = self.start.shape[0], APPEND_ROWS
        rows, kv = first.context_rows(self.hidden, self.start)  # [S, A] cache rows = positions, (k, v) [S, A, Hkv, D] per layer
        slot = torch.arange(s, device=rows.device)[:, None].expand(s, a)  # [S, A]
        for (k_buf, v_buf), (k, v) in zip(self.buffers(), kv):
            k_buf.index_put_((slot, rows), k.to(k_buf.dtype))
            v_buf.index_put_((slot, rows), v.to(v_buf.dtype))
        logp, tokens = first.draft_many(self.root, self.anchor, self.buffers(), depths)  # [S, depths, k] each
        # (logp, token ids) [S, 2, depths, k] float32 for the host (ids exact below 2^24), the ids as int64 for the device
        return torch.stack([logp.float(), tokens.float()], dim=1), tokens.long()


APPEND_BUCKETS = (APPEND_ROWS, 64, 128, 256, 512, 1024, 2048)  # `append_one`'s row buckets: a graph each, shared by every slot


class PooledDrafts:
    """A pooled step's drafts on the host, host [S, 2, depths, k] (logp, token ids), calibrated for
    every slot at once when the first member's `propose` asks (`CalibratedDrafts`): S members pay
    one pass of array ops, not S. Read by a member's `propose` after it waited for the job's copy
    (`_drafted_ready`: the job's event; the step's read-back is queued before the job)."""

    def __init__(self, host: torch.Tensor):
        self.host = host
        self._made: dict[int, tuple[HeadCalibration, CalibratedDrafts]] = {}  # id(calibration) -> it, its drafts

    def marginals(self, calibration: HeadCalibration, s: int) -> CalibratedMarginals:
        made = self._made.get(id(calibration))
        if made is None or made[0] is not calibration:
            arr = self.host.numpy()  # [S, 2, depths, k]
            made = self._made[id(calibration)] = (calibration, calibration.drafts(arr[:, 1].astype(np.int64), arr[:, 0]))
        return made[1].marginals(s)
