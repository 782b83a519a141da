"""`paged` KV cache: fixed-size pages in a per-layer pool, reached through a slot map.

Storage
-------
    k, v          [L, num_pages, page_size, Hkv, D]   page pools (keys after RoPE)
    slot_table    [capacity] int32, on the cache's device: slot_table[t] = physical row of
                  logical token t, where row = page * page_size + offset into the flat view
                  [num_pages * page_size, Hkv, D] of one layer's pool. Entries [0, T + n) are live.
                  Caches made by `sequences(n)` share one pool and one table [n, capacity] whose row
                  `slot_row` is each one's slot_table (`PooledSlotTables`: a CUDA graph of a packed
                  forward reads every sequence's slot map from it in place).
    block_table   [pages of capacity] int32: the physical pages this sequence owns, in order
                  (gather mode: logical page p of the sequence is block_table[p]).

Commit strategies (`PagedCacheOptions.commit`)
----------------------------------------------
* "gather": logical token t always lives at row block_table[t // P] * P + t % P. Commit copies
  the kept pending entries into logical slots T..T+k-1 (all layers at once) and frees the pages
  past the new end.
* "remap": kept entries stay in the rows verify wrote them to; commit only rewrites
  slot_table[T : T + k]. Rows of discarded entries become holes that the next `begin` fills
  first; a page whose rows are all holes goes back to the pool. No K/V bytes move.

Either way `read` returns logical order and the attention kernels read through `slot_table`, so
both strategies look the same from outside (tests assert `read` equals the dense cache's).

`stage_commit(keep)` (`CommitsOnDevice`) does the device half of either strategy from a device
index, before the host knows the path: gather copies the rows, remap rewrites `slot_table` on the
device. The `commit` that follows only does the host bookkeeping (pages, holes, the mirror).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core import on_device
from ..core.errors import CapacityError, InputError
from ..core.interfaces import TargetInfo
from .page_pool import PagePool
from .table_mirror import TableMirror


class PagedCacheOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    page_size: int = Field(16, ge=1, description="tokens per page")
    commit: Literal["gather", "remap"] = Field("gather", description="copy kept entries, or remap slots")
    max_pages: int | None = Field(None, ge=1, description="pool size; default: enough pages for `capacity`")


@dataclass(frozen=True)
class CacheFootprint:
    """What a cache needs to hold a run: tokens, whole pages, and bytes of K+V over all layers."""

    tokens: int
    pages: int
    bytes: int


class PagedKVCache:
    """One sequence's cache. Its pages come from its own pool, or from a pool shared with other
    sequences (`pool`): then `reset` gives back only this sequence's pages."""

    def __init__(self, info: TargetInfo, capacity: int, options: PagedCacheOptions | None = None,
                 pool: PagePool | None = None, slot_tables: torch.Tensor | None = None, slot_row: int = 0):
        opts = options or PagedCacheOptions()
        self.info, self.options = info, opts
        self.capacity = capacity
        self.page_size = p = opts.page_size
        self._shared = pool is not None
        pool = pool or PagePool.make(info, opts.max_pages or math.ceil(capacity / p), p)
        self.num_pages = pool.allocator.num_pages
        self.k, self.v = pool.k, pool.v  # [L, pages, P, Hkv, D] each
        if slot_tables is None:  # a cache alone: a table of one row
            slot_tables = torch.zeros(1, capacity, dtype=torch.int32, device=info.device)
        # `PooledSlotTables`: the slot maps of a pool's sequences are the rows of one table [S, capacity]
        self.slot_tables, self.slot_row = slot_tables, slot_row
        self.slot_table = slot_tables[slot_row]  # [capacity] int32
        self._block_table = torch.zeros(math.ceil(capacity / p), dtype=torch.int32, device=info.device)  # sent when read
        self.allocator = pool.allocator
        self._pages: list[int] = []
        # pool rows of the pending tokens, in a persistent buffer so that a CUDA graph captured
        # over `write` stays valid from round to round (filled eagerly by `begin`, once `write` has
        # been used: exact mode writes K/V in its kernels, and a batch would pay a copy per sequence)
        self._write_rows = torch.zeros(capacity, dtype=torch.int64, device=info.device)  # [capacity]
        self._writes = False
        self.reset()

    graph_safe = True

    # ------------------------------------------------------------------ sizing
    @staticmethod
    def footprint(info: TargetInfo, seq_len: int, budget: int, page_size: int = 16) -> CacheFootprint:
        """Pages and bytes for sequences of up to `seq_len` tokens (prompt + generated) verified
        with trees of `budget` drafts: at most seq_len - 1 committed + budget + 1 pending tokens."""
        tokens = seq_len + budget
        pages = math.ceil(tokens / page_size)
        row = info.kv_heads_here * info.head_dim * torch.empty((), dtype=info.dtype).element_size()
        return CacheFootprint(tokens=tokens, pages=pages, bytes=2 * info.num_layers * pages * page_size * row)

    # ------------------------------------------------------------------ KVCache protocol
    @property
    def committed(self) -> int:
        return self._committed

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pages_in_use(self) -> int:
        return len(self._pages)

    @property
    def slot_mapping(self) -> torch.Tensor:
        """[T + n] int32 physical rows of the live logical tokens (a view of `slot_table`)."""
        return self.slot_table[: self._committed + self._pending]

    def sequences(self, n: int) -> list["PagedKVCache"]:
        """`BatchedKVCache`: n caches of this capacity over one pool of `max_pages`, or by default
        n times the pages one sequence can use (every sequence can then always grow to capacity)."""
        p = self.page_size
        pool = PagePool.make(self.info, self.options.max_pages or n * math.ceil(self.capacity / p), p)
        tables = torch.zeros(n, self.capacity, dtype=torch.int32, device=self.info.device)  # [n, capacity]: row i is cache i's slot map
        return [type(self)(self.info, self.capacity, self.options, pool=pool, slot_tables=tables, slot_row=i) for i in range(n)]

    def reset(self) -> None:
        if self._shared:  # only this sequence's pages go back
            self.allocator.release(self._pages)
        else:
            self.allocator.reset()
        self._pages: list[int] = []  # owned physical pages, in order of acquisition
        self._given_back: list[int] = []  # the pages the last commit gave back, in their order
        self._slots: list[int] = []  # host mirror of slot_table[: T + n]
        self._holes: dict[int, list[int]] = {}  # remap: page -> free rows in it
        self._live: dict[int, int] = {}  # remap: page -> live rows in it
        self._committed = self._pending = self._staged = 0
        self._table = TableMirror()  # gather: the pages whose rows slot_table holds, in order
        self._blocks = TableMirror()  # the pages _block_table holds

    def begin(self, n: int) -> None:
        t = self._committed
        if n < 0:
            raise InputError(f"cannot reserve {n} pending KV slots; n must be >= 0")
        if t + n > self.capacity:
            raise CapacityError(
                f"KV cache full: {t} committed + {n} new tokens exceed its capacity of {self.capacity}"
            )
        self._discard_pending()
        new_pages = self._pages_to_add(n)
        if new_pages > self.allocator.free:
            raise CapacityError(
                f"KV page pool full: {n} new tokens need {new_pages} more pages of {self.page_size}, "
                f"{self.allocator.free} of {self.num_pages} free"
            )
        rows = self._take_rows(n, self.allocator.allocate(new_pages, prefer=self._given_back))
        self._slots[t:] = rows
        if self.options.commit == "gather":  # a logical slot's row changes only with its page: send whole pages, once
            self._sync_pages()
        else:
            self._sync_slots(t, t + n)
        self._pending, self._staged = n, 0
        if self._writes:
            self._write_rows[:n].copy_(self.slot_table[t : t + n])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if not self._writes:  # the first write ever (eager: a graph capture's warm-up run comes first)
            t = self._committed
            self._write_rows[: self._pending].copy_(self.slot_table[t : t + self._pending])
            self._writes = True
        rows = self._write_rows[: self._pending]  # [n] int64
        self._rows(self.k, layer).index_copy_(0, rows, k)  # k: [n, Hkv, D]
        self._rows(self.v, layer).index_copy_(0, rows, v)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.slot_mapping.long()  # [T + n]
        return self._rows(self.k, layer)[rows], self._rows(self.v, layer)[rows]

    def stage_commit(self, keep: torch.Tensor) -> None:
        """`CommitsOnDevice`: logical slot t + j gets pending entry keep[j], j < M (keep [M] int64
        on the device), by copying rows (gather) or rewriting slot_table (remap); one launch on
        CUDA (`triton_rows.py`), the torch ops below elsewhere."""
        t, m = self._committed, keep.numel()
        if on_device.fused(keep):
            from .triton_rows import move_rows

            if self.options.commit == "gather":  # K and V rows, every layer, through the slot map
                move_rows(self._flat(self.k), self._flat(self.v), keep, t, self.slot_table)
            else:  # the slot map's entries themselves, as one layer of one-element rows
                move_rows(self.slot_table.view(1, -1), None, keep, t)
        elif self.options.commit == "gather":
            src = self.slot_table[t : t + self._pending][keep].long()  # [M]: rows of the kept entries
            dst = self.slot_table[t : t + m].long()  # [M]
            for pool in (self.k, self.v):
                flat = self._flat(pool)  # [L, pages * P, Hkv, D]
                flat[:, dst] = flat[:, src]  # the right side is gathered first
        else:
            self.slot_table[t : t + m] = self.slot_table[t : t + self._pending][keep]
        self._staged = m

    def stage_commit_many(self, caches: Sequence["PagedKVCache"], keeps: torch.Tensor,
                          moves: Sequence[tuple[int, int, int]]) -> bool:
        """`CommitsBatchOnDevice`: for every s, caches[s].stage_commit(keeps[o : o + M].clamp(0, N - 1))
        with (o, M, N) = moves[s] — on CUDA in ONE launch for the whole step (`move_rows_many`),
        elsewhere one call each. False, with nothing done, unless every cache is of this pool and
        slot-map table (`sequences`) and commit strategy."""
        if not all(isinstance(c, PagedKVCache) and c.k is self.k and c.slot_tables is self.slot_tables
                   and c.options.commit == self.options.commit for c in caches):
            return False
        if not on_device.fused(keeps):
            for c, (o, m, n) in zip(caches, moves):
                c.stage_commit(keeps[o : o + m].clamp(0, n - 1))
            return True
        from .triton_rows import move_rows_many

        row = self.slot_tables.shape[1]  # C: a sequence's slot map starts at slot_row * C of the flat table
        at = [(o, m, n - 1, c.slot_row * row + c._committed) for c, (o, m, n) in zip(caches, moves)]
        flat = self.slot_tables.view(-1)
        if self.options.commit == "gather":  # K and V rows, every layer, through the flat slot table
            move_rows_many(self._flat(self.k), self._flat(self.v), keeps, at, flat)
        else:  # the slot maps' entries themselves, as one layer of one-element rows
            move_rows_many(flat.view(1, -1), None, keeps, at)
        for c, (_, m, _) in zip(caches, moves):
            c._staged = m
        return True

    def commit(self, keep: Sequence[int]) -> None:
        keep = [int(j) for j in keep]
        t, n = self._committed, self._pending
        if any(not 0 <= j < n for j in keep) or keep != sorted(set(keep)):
            raise InputError(f"commit keeps pending indices {keep}; they must be ascending and in 0..{n - 1}")
        if len(keep) > self._staged > 0:
            raise InputError(f"commit keeps {len(keep)} entries; stage_commit staged only {self._staged}")
        if self.options.commit == "gather":
            self._commit_gather(t, keep)
        else:
            self._commit_remap(t, keep)
        self._committed = t + len(keep)
        self._pending = self._staged = 0

    # ------------------------------------------------------------------ commit strategies
    def _commit_gather(self, t: int, keep: list[int]) -> None:
        k = len(keep)
        if keep != list(range(k)) and not self._staged:  # copy kept entries to logical slots t..t+k-1, every layer
            src = torch.tensor([self._slots[t + j] for j in keep], device=self.k.device)  # [k]
            dst = self.slot_table[t : t + k].long()  # [k]
            for pool in (self.k, self.v):
                flat = self._flat(pool)  # [L, pages * P, Hkv, D]
                flat[:, dst] = flat[:, src]  # the right side is gathered first: overlap is safe
        del self._slots[t + k :]
        keep_pages = math.ceil((t + k) / self.page_size)
        self._given_back = self._pages[keep_pages:]  # the next begin asks for them again (`PageAllocator.allocate`)
        self.allocator.release(self._given_back)
        del self._pages[keep_pages:]  # block_table past the pages in use is never read
        self._table.cut(keep_pages)
        self._blocks.cut(keep_pages)

    def _commit_remap(self, t: int, keep: list[int]) -> None:
        pending = self._slots[t:]
        kept = [pending[j] for j in keep]
        dropped = sorted(set(pending) - set(kept))
        self._slots[t:] = kept
        if not self._staged:  # else stage_commit wrote slot_table already
            self._sync_slots(t, t + len(kept))
        self._free_rows(dropped)

    # ------------------------------------------------------------------ row bookkeeping
    def _pages_to_add(self, n: int) -> int:
        if self.options.commit == "gather":
            return max(0, math.ceil((self._committed + n) / self.page_size) - len(self._pages))
        return max(0, math.ceil((n - sum(len(h) for h in self._holes.values())) / self.page_size))

    def _take_rows(self, n: int, new_pages: list[int]) -> list[int]:
        """Physical rows for n pending tokens, after acquiring `new_pages`."""
        p = self.page_size
        self._pages.extend(new_pages)
        if self.options.commit == "gather":
            t = self._committed
            return [self._pages[s // p] * p + s % p for s in range(t, t + n)]
        for page in new_pages:  # remap: new pages start as all holes
            self._holes[page] = [page * p + o for o in range(p - 1, -1, -1)]
            self._live[page] = 0
        rows: list[int] = []
        for page in list(self._holes):  # fill holes of older pages first
            free = self._holes[page]
            while free and len(rows) < n:
                rows.append(free.pop())
                self._live[page] += 1
            if not free:
                del self._holes[page]
            if len(rows) == n:
                break
        return rows

    def _free_rows(self, rows: list[int]) -> None:
        """Remap mode: return rows to their pages' holes; give back pages left empty."""
        p = self.page_size
        for row in rows:
            page = row // p
            self._holes.setdefault(page, []).append(row)
            self._live[page] -= 1
        empty = [page for page in {r // p for r in rows} if self._live[page] == 0]
        for page in empty:
            del self._holes[page], self._live[page]
        if empty:
            self._pages = [page for page in self._pages if page in self._live]  # the empty ones just left it
            self.allocator.release(empty)
            self._blocks.cut(0)  # a page left from the middle: compare from the start

    def _discard_pending(self) -> None:
        """A `begin` without `commit` of the previous one: drop those pending tokens."""
        if self._pending:
            t = self._committed
            if self.options.commit == "gather":
                self._commit_gather(t, [])
            else:
                dropped = self._slots[t:]
                del self._slots[t:]
                self._free_rows(dropped)
            self._pending = 0

    # host -> device writes: only what changed, non-blocking, from a fresh host tensor (pinned on a GPU)
    def _sync_slots(self, lo: int, hi: int) -> None:
        if hi > lo:
            self.slot_table[lo:hi].copy_(self._host(self._slots[lo:hi]), non_blocking=True)

    def _sync_pages(self) -> None:
        """Gather mode: send the rows of the pages held that slot_table does not hold yet (one copy when a
        new page comes; none when a page given back comes back: the allocator is last-in first-out)."""
        p = self.page_size
        same = self._table.sync(self._pages)
        lo, hi = same * p, min(len(self._pages) * p, self.capacity)
        if hi > lo:
            rows = [self._pages[s // p] * p + s % p for s in range(lo, hi)]
            self.slot_table[lo:hi].copy_(self._host(rows), non_blocking=True)

    def _host(self, values: list[int]) -> torch.Tensor:  # [len(values)] int32, the source of one of those writes
        return on_device.pinned(torch.tensor(values, dtype=torch.int32), self.slot_table.device)

    @property
    def block_table(self) -> torch.Tensor:
        """[pages of capacity] int32 on the device: the pages held, in order (entries past `pages_in_use`
        unread). Sent when read, not at every `begin`: the engine's attention reads `slot_table` alone,
        and a step should not pay a copy per sequence for a table only other readers (FlashInfer) use."""
        same = self._blocks.sync(self._pages)
        if len(self._pages) > same:
            self._block_table[same : len(self._pages)].copy_(self._host(self._pages[same:]), non_blocking=True)
        return self._block_table

    @staticmethod
    def _flat(pool: torch.Tensor) -> torch.Tensor:
        return pool.view(pool.shape[0], -1, *pool.shape[3:])  # [L, pages * P, Hkv, D]

    @staticmethod
    def _rows(pool: torch.Tensor, layer: int) -> torch.Tensor:
        return pool[layer].view(-1, *pool.shape[3:])  # [pages * P, Hkv, D]
