"""The head's own KV cache of the fused context, and the `observe`/`reset` half of every head
drafter: after prefill and after each round, the target hidden states of the tokens whose K/V was
just committed are fused and projected to each head layer's K/V, and appended.

Invariant between rounds: `length == len(state.tokens) - 1` (the root's hidden is not known yet),
the same as the target's committed KV length; the anchor (root) sits at position `length`.

Appended ahead (`append_ahead`, for `DraftsAhead`): before the host knows which nodes a round
accepted, the rows of the whole accepted-path slot [D + 1] (`packed`'s path, on the device) are
written at `length`; the `observe` that follows only advances `length` when the round committed
the whole path (its `hidden` has as many rows as it committed tokens, or is None: the engines
gather no rows for a drafter that keeps them ahead, `KeepsRowsAhead`). Rows past the path's true
length are finite rows past `length`, which the invariant of `ContextCache` allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.errors import IncompatibleError, InputError
from ...core.interfaces import DecodeState, LendsEmbeddings
from .model import DraftHead

if TYPE_CHECKING:
    from .pool import ContextPool


class ContextCache:
    """Per head layer K/V of the fused context: buffers [capacity, Hkv, D], `length` rows used.

    The buffers outlive `reset` and are reallocated only to grow (doubling; `version` counts the
    reallocations), so CUDA graphs that read them whole stay valid from one generation to the
    next. Rows past `length` hold zeros or an earlier generation's K/V, never uninitialised
    memory: a graph attends over the whole buffer with those keys masked, and a NaN there would
    survive the mask (0 * NaN = NaN)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 1024):  # fmt: skip
        self._shape = (num_kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        zeros = lambda: torch.zeros(capacity, *self._shape, dtype=dtype, device=device)  # noqa: E731
        self._k = [zeros() for _ in range(num_layers)]  # per layer [capacity, Hkv, D]
        self._v = [zeros() for _ in range(num_layers)]
        self.length = 0
        self.version = 0
        self.pool: ContextPool | None = None  # the pool whose slot views these buffers are (`pool.py`), if any

    @property
    def capacity(self) -> int:
        return self._k[0].shape[0]

    def bind(self, k: list[torch.Tensor], v: list[torch.Tensor], version: int) -> None:
        """Serve from other buffers, per layer [capacity, Hkv, D] holding this cache's rows (a pool
        slot's views); `version` (above every earlier one) makes graphs over the old buffers recapture."""
        self._k, self._v, self.version = k, v, version

    def reset(self) -> None:
        self.length = 0

    def reserve(self, rows: int) -> None:
        """Make room for `rows` rows in all (doubling; a reallocation bumps `version`; a pooled
        cache's pool grows every slot)."""
        if self.pool is not None:
            self.pool.reserve(rows)
        elif rows > self.capacity:
            cap = self.capacity
            while cap < rows:
                cap *= 2
            grow = lambda t: torch.cat([t[: self.length], t.new_zeros(cap - self.length, *self._shape)])  # noqa: E731
            self._k, self._v = [grow(t) for t in self._k], [grow(t) for t in self._v]
            self.version += 1

    def context(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v) [1, length, Hkv, D] views."""
        return [(k[None, : self.length], v[None, : self.length]) for k, v in zip(self._k, self._v)]

    def buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v) [1, capacity, Hkv, D]: the whole buffers (rows >= length to be masked)."""
        return [(k[None], v[None]) for k, v in zip(self._k, self._v)]


class ContextDrafter:
    """Shared by the head drafters: owns the head, the cache, and the target's embedding/LM head."""

    def __init__(self, head: DraftHead, target: Any):
        if not isinstance(target, LendsEmbeddings):
            raise IncompatibleError(
                f"a head drafter drafts through its target's embedding and LM head; target {type(target).__name__} "
                "lends neither (give it embed(tokens) and lm_head(hidden): LendsEmbeddings)"
            )
        info = target.info
        self.head = head.to(device=info.device, dtype=info.dtype).freeze()  # shared by the drafters of a target: frozen once
        self.target = target
        self.config = head.config
        self.hidden_layers: tuple[int, ...] = tuple(head.config.target_layers)
        c = head.config
        self.cache = ContextCache(c.num_layers, c.num_kv_heads, c.head_dim, info.dtype, info.device)
        self.graphs = None  # HeadGraphs on CUDA (use_graphs)
        self.appended_ahead: tuple[int, int] | None = None  # (start, rows) of the last append_ahead
        self.kept_ahead = False  # the last observe kept the rows appended ahead (the round committed its whole path)

    def use_graphs(self, enabled: bool) -> None:
        """Replay the per-round steps from CUDA graphs where the device is a CUDA GPU."""
        self.graphs = None
        if enabled and self.cache._device.type == "cuda":
            from .graphs import HeadGraphs

            self.graphs = HeadGraphs(self.cache._device, self.cache._dtype, len(self.hidden_layers), self.config.hidden_size)

    def reset(self, state: DecodeState) -> None:
        self.cache.reset()
        self.appended_ahead, self.kept_ahead = None, False

    @torch.no_grad()
    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        """Append the fused context of the newly committed tokens. `hidden` [n, k, H] may cover
        more tokens than were committed (a round cut short by max_new_tokens); the extra rows
        are dropped. None after a drafted-ahead round that committed its whole path (`KeepsRowsAhead`):
        the rows `append_ahead` wrote are the round's. Fewer rows than committed tokens is an error:
        the cache would fall out of step with the target's."""
        need = len(state.tokens) - 1 - self.cache.length
        n = need if hidden is None else hidden.shape[0]  # None: the rows appended ahead stand for the round's
        ahead, self.appended_ahead = self.appended_ahead, None
        self.kept_ahead = ahead is not None and ahead[0] == self.cache.length and n == need <= ahead[1]
        if self.kept_ahead:
            self.cache.length += need  # append_ahead wrote these rows: the round committed its whole path
            return
        if need == 0:
            return
        if hidden is None or n < need:
            got = "no hidden states and no rows appended ahead" if hidden is None else f"{n} new hidden states"
            raise InputError(f"head context out of step: {self.cache.length} cached + {got}, "
                             f"but {len(state.tokens) - 1} tokens are committed before the root")
        self.append(hidden[:need].to(self.cache._device), self.cache.length)  # [need, k, H]
        self.cache.length += need

    def append(self, rows: torch.Tensor, start: int) -> None:
        """rows [n, k, H] -> their fused context's K/V at cache rows start .. start + n - 1 (room made
        here; the caller advances `length`): a pooled drafter's from its pool's graphs (a prompt's too),
        else from a CUDA graph of APPEND_ROWS padded rows where there is one, else eagerly."""
        if self.graphs is not None and self.cache.pool is not None and self.cache.pool.append_one(self, rows, start):
            return  # a pooled drafter's: from its pool's graphs, shared by every slot (`ContextPool.append_one`)
        if self.graphs is not None and rows.shape[0] <= self.graphs.append_rows:
            self.cache.reserve(start + self.graphs.append_rows)  # room for the padded write; may bump the version
            self.graphs.append(self.cache.version, rows, start, self.write_context)  # replayed from a CUDA graph
        else:
            self.cache.reserve(start + rows.shape[0])
            # start made on the device by a fill: torch.tensor([start], device=cuda) copies from pageable memory, which
            # waits for the stream's queued work (a prefill's observe then waited for the other half's step)
            self.write_context(rows, torch.full((1,), start, dtype=torch.int64, device=self.cache._device))

    def append_ahead(self, hidden: torch.Tensor, path: torch.Tensor) -> None:
        """The next `observe`'s append queued before the host knows the accepted path: hidden
        [N, k, H] the verify pass's rows, path [D + 1] int64 on the device (`packed`'s path slot,
        clamped into the tree: a verifier's bad index must not become a device fault) -> the rows of
        path[0 .. D] at `length` .. `length` + D."""
        rows = hidden.index_select(0, path.clamp(0, hidden.shape[0] - 1)).to(self.cache._device)  # [D + 1, k, H]
        self.append(rows, self.cache.length)
        self.appended_ahead = (self.cache.length, rows.shape[0])

    def write_context(self, hidden: torch.Tensor, start: torch.Tensor) -> None:
        """hidden [R, k, H] target hidden states of R committed tokens, start [1] int64 on the
        device: their fused context's K/V go to rows start .. start + R - 1 of every head layer
        (the caller made room and advances `length`)."""
        rows, kv = self.context_rows(hidden[None], start)  # [1, R], per head layer (k, v) [1, R, Hkv, D]
        for (k_buf, v_buf), (k, v) in zip(self.cache.buffers(), kv):
            k_buf[0].index_copy_(0, rows[0], k[0].to(k_buf.dtype))
            v_buf[0].index_copy_(0, rows[0], v[0].to(v_buf.dtype))

    def context_rows(self, hidden: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """What a context append of S sequences writes: hidden [S, R, k, H], start [S] int64 -> rows
        [S, R] (positions = cache rows: start_s + r) and per head layer the context's (k, v)
        [S, R, Hkv, D]. Reads and writes no state (a compiled form is a pure function)."""
        rows = start[:, None] + torch.arange(hidden.shape[1], device=start.device)  # [S, R]
        return rows, self.head.context_kv(self.head.fuse_context(hidden), rows)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [n] -> [n, H] through the target's own embedding."""
        return self.target.embed(tokens.to(self.cache._device)).to(self.cache._dtype)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, H] head outputs -> [n, V] float32 log-probs through the target's own LM head."""
        return torch.log_softmax(self.target.lm_head(h), dim=-1, dtype=torch.float32)  # CUDA: no float32 copy of the logits
