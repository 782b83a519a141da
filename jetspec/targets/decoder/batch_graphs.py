"""CUDA graphs for the packed verify forward of several sequences (`forward_batch`, exact = true).

A batched step of a small model is launch-bound: SmolLM2's packed forward is ~190 Triton launches
whatever the batch, each costing the host tens of µs. Captured once per row bucket and replayed,
a step costs the host one host-to-device copy, two device copies and one graph launch.

Static buffers (Rmax: the largest bucket; a forward of R rows runs in bucket Rb >= R; C: the slot
maps' length; S': the rows of the pool's slot-map table, `PooledSlotTables`):

    tokens      [Rmax] int64   the packed rows' tokens (copied on the device), then stale pads
    positions   [Rmax] int64   T_s + depth (copied on the device), then stale pads (earlier
                               positions: in range, and no real row reads a pad)
    block       [BLOCK(Rmax, S')] int64, filled on the host (on CUDA in two pinned blocks by turns: a fill
                waits for its block's copy of two forwards ago, never the one just launched), ONE copy, read as
      write_at    [Rmax]       row r = cu_rows[s] + i: slot_row_s * C + T_s + i, the flat index of its
                               pending slot in the table (pads: 0)
      writes      [Rmax]       1 for a real row, 0 for a pad
      row_prefix  [Rmax]       T_s of its sequence (pads: 0)
      first_row   [Rmax]       cu_rows[s] (pads: 0)
      tiles       [Rmax, 5]    `pack_tiles` for block_m rows, slot maps at slot_row_s * C, prefix index
                               slot_row_s; then pad tiles (N = 0: no row, nothing stored)
      tail        [Rmax, 5]    the same for the kernel's TAIL_ROWS tiles
      prefix      [S']         T_s at row slot_row_s (rows of sequences not in the step: stale, unread)

In the graph: pool row of row r = table.flat[write_at[r]] where writes[r], else -1 (rope_write
writes a -1 row nowhere); the ancestor table from positions (`ancestor_table`); then the model's
own eager forward with `PackedKV(rows=...)` and the backend's `attend_tables` over the static
`PackedTables`.

Why padding changes no bit of a real row: every layer but attention is row-invariant (a row's bits
do not depend on R: the exactness tests); an attention tile never spans two sequences, a pad tile
has no rows, and a pad row's K/V are not written. The tile tables fit Rmax rows because a
sequence's tiles never outnumber its rows (GQA group <= 16 <= a tile's rows).

Graphs are kept per (slot-map table, Rb, ancestor width (0: every sequence a chain), one launch or
two, launch 1's tile rows, hidden layers) in one memory pool; a new table (a new run's pool) drops the old table's graphs.
`capture=False` runs the same static-buffer forward without a graph (the CPU tests of padding).
"""

from __future__ import annotations

import dataclasses
import weakref
from bisect import bisect_left
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ...core.batch import BatchMeta, PackedKV, PackedTables
from ...core.cuda_graphs import GraphSet
from ...core.interfaces import AttendsPackedTables, KVCache, PooledSlotTables, RowKVCache, TargetOutput
from ...kernels.invariant_launch_forms import TAIL_ROWS, one_launch_for, one_launch_tiles, row_tiles
from ...kernels.row_inputs import ancestor_table
from .graphs import GraphCaptureFailed

# the model's forward without graphs: (tokens, meta, packed cache, hidden layers, attention) -> output
Eager = Callable[[torch.Tensor, BatchMeta, PackedKV, Sequence[int], object], TargetOutput]

ROW_BUCKETS = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
WIDTH_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # ancestor-table widths (the largest tree)


class TablesAttention:
    """The `attention` a single-sequence model calls, answered from static `PackedTables`."""

    def __init__(self, backend: AttendsPackedTables, tables: PackedTables):
        self.backend, self.tables = backend, tables

    def attend(self, q: torch.Tensor, cache: PackedKV, layer: int, meta: BatchMeta, scale: float) -> torch.Tensor:
        k, v, _ = cache.shared_rows()  # [L, ..., Hkv, D] each
        return self.backend.attend_tables(q, k[layer].view(-1, *k.shape[-2:]), v[layer].view(-1, *v.shape[-2:]),
                                          self.tables, scale)


class BatchGraphForward:
    def __init__(self, device: torch.device, attention: AttendsPackedTables, group: int, kv_heads: int, key_bytes: int,
                 max_rows: int = 2048, capture: bool = True):
        """group: query heads per KV head; kv_heads: this rank's; key_bytes: one cached key's K and V, one layer."""
        from ...core.invariant import arrival_counters

        self.device, self.attention, self.group, self.key_bytes, self.capture = device, attention, group, key_bytes, capture
        self.tail_rows = TAIL_ROWS  # the kernel's tail tile: tiles <= rows needs group <= this
        self.buckets = tuple(b for b in ROW_BUCKETS if b <= max_rows)
        r = self.buckets[-1]
        if device.type == "cuda":  # the split merge's counters, grown now: a capture cannot grow them
            arrival_counters(device, r * kv_heads)
        self.tokens = torch.zeros(r, dtype=torch.int64, device=device)  # [Rmax]
        self.positions = torch.zeros(r, dtype=torch.int64, device=device)  # [Rmax]
        self.graphs = GraphSet()  # key (Rb, width, one launch, block_m, hidden layers) -> graph, static output
        self._table: torch.Tensor | None = None  # the slot-map table whose graphs `graphs` holds
        # (host blocks with their numpy views, the device block): on CUDA two host blocks filled in turn, so
        # that a step's fill never waits for the copy of the step just launched (the other half's, overlapped)
        self._block: tuple[list[tuple[torch.Tensor, np.ndarray]], torch.Tensor] | None = None
        self._done = [torch.cuda.Event(), torch.cuda.Event()] if device.type == "cuda" else None  # each host block's last copy
        self._turn = 0  # the host block filled last
        self._checked: weakref.WeakValueDictionary[int, KVCache] = weakref.WeakValueDictionary()  # caches that qualify

    # ------------------------------------------------------------------ which forwards
    def handles(self, meta: BatchMeta, caches: Sequence[KVCache]) -> bool:
        """Rows fit a bucket, the group fits the tile rule, every cache shares one slot-map table and pool."""
        if meta.num_queries > self.buckets[-1] or self.group > self.tail_rows:
            return False
        first = caches[0]
        for c in caches:
            if self._checked.get(id(c)) is not c:  # once per cache object: Protocol checks are slow
                if not (isinstance(c, PooledSlotTables) and isinstance(c, RowKVCache)):
                    return False
                self._checked[id(c)] = c
            if c.slot_tables is not first.slot_tables or c.k is not first.k:
                return False
        return True

    # ------------------------------------------------------------------ one forward
    def forward(self, tokens: torch.Tensor, meta: BatchMeta, caches: Sequence[KVCache],
                hidden_layers: Sequence[int], eager: Eager) -> TargetOutput:
        r = meta.num_queries
        rb = self.buckets[bisect_left(self.buckets, r)]
        cu = np.asarray(meta.cu_rows, dtype=np.int64)  # [S + 1]
        counts = np.diff(cu)  # [S] N_s
        prefix = np.fromiter((m.prefix_len for m in meta.seqs), dtype=np.int64, count=meta.num_sequences)  # [S] T_s
        largest = int(counts.max())
        chain = all(m.chain for m in meta.seqs)
        wide = min(WIDTH_BUCKETS[bisect_left(WIDTH_BUCKETS, largest)], rb)  # the largest tree, bucketed
        width = 0 if chain else wide  # the ancestor table's
        block_m = row_tiles(wide * self.group)[0]  # launch 1's tiles, were it two: no bit depends on them
        one_launch = one_launch_for((counts * self.group).tolist(), prefix.tolist(), block_m, chain, self.key_bytes)
        block_m = one_launch_tiles(one_launch, chain, block_m)
        table = caches[0].slot_tables  # [S', C]
        if table is not self._table:  # a new pool: the old one's graphs point at freed memory
            self.graphs.clear()
            self._table, self._block = table, None
        self._fill(tokens, meta, caches, rb, block_m, table, cu, prefix)
        hidden_layers = tuple(hidden_layers)
        run = lambda: self._bucket(rb, width, one_launch, block_m, meta, caches, hidden_layers, eager)  # noqa: E731
        if not self.capture:
            out = run()
        else:
            try:
                out = self.graphs.replay((rb, width, one_launch, block_m, hidden_layers), run)
            except RuntimeError as e:
                raise GraphCaptureFailed(f"CUDA graph capture of the packed forward failed, running eagerly: "
                                         f"{str(e).splitlines()[0]}") from e
        return TargetOutput(logits=out.logits[:r], hidden=None if out.hidden is None else out.hidden[:r])

    def _fill(self, tokens: torch.Tensor, meta: BatchMeta, caches: Sequence[KVCache], rb: int, block_m: int,
              table: torch.Tensor, cu: np.ndarray, prefix: np.ndarray) -> None:
        """The static inputs of this forward (cu [S + 1] the rows' offsets, prefix [S] T_s): tokens
        and positions by device copies, the rest in one host block and one copy (layout in the
        module docstring)."""
        from ...kernels.triton_tree_attention import pack_tiles

        rmax, (seqs, cap) = self.buckets[-1], table.shape
        if self._block is None:
            cuda = self.device.type == "cuda"
            hosts = [torch.zeros(14 * rmax + seqs, dtype=torch.int64, pin_memory=cuda) for _ in range(2 if cuda else 1)]
            self._block = ([(h, h.numpy()) for h in hosts], torch.empty_like(hosts[0], device=self.device) if cuda else hosts[0])
        hosts, dev = self._block
        self._turn = (self._turn + 1) % len(hosts)
        host, block = hosts[self._turn]
        if self._done is not None:
            self._done[self._turn].synchronize()  # this block's last copy out (two forwards ago) has finished
        r, s = meta.num_queries, meta.num_sequences
        counts = np.diff(cu)  # [S] N_s
        slot_rows = np.fromiter((c.slot_row for c in caches), dtype=np.int64, count=s)  # [S]
        seq = np.repeat(np.arange(s), counts)  # [R] each row's sequence
        write_at, writes, row_prefix, first_row = (block[k * rmax : (k + 1) * rmax] for k in range(4))
        write_at[:r] = slot_rows[seq] * cap + prefix[seq] + np.arange(r) - cu[seq]
        writes[:r], row_prefix[:r], first_row[:r] = 1, prefix[seq], cu[seq]
        for part in (write_at, writes, row_prefix, first_row):
            part[r:rb] = 0
        made: dict[int, np.ndarray] = {}  # tile rows -> the table (decode steps: launch 1's tiles are the tail's)
        for k, rows in ((4, block_m), (9, self.tail_rows)):  # tiles at [4 Rmax, 9 Rmax), tail at [9 Rmax, 14 Rmax)
            tiles = block[k * rmax : (k + 5) * rmax].reshape(rmax, 5)
            if rows not in made:
                made[rows] = pack_tiles(cu, slot_rows * cap, self.group, rows).numpy()  # [tiles, 5]
            n = made[rows].shape[0]
            tiles[:n] = made[rows]
            tiles[:n, 4] = slot_rows[made[rows][:, 4]]  # the prefix index: the sequence's table row
            tiles[n:rb] = 0
            tiles[n:rb, 2] = np.arange(n, rb)  # a pad tile is the first (and only) of its own empty sequence
        block[14 * rmax + slot_rows] = prefix
        if dev is not host:
            dev.copy_(host, non_blocking=True)
            self._done[self._turn].record()
        self.tokens[:r].copy_(tokens, non_blocking=True)
        self.positions[:r].copy_(meta.positions, non_blocking=True)

    def _bucket(self, rb: int, width: int, one_launch: bool, block_m: int, meta: BatchMeta, caches: Sequence[KVCache],
                hidden_layers: tuple[int, ...], eager: Eager) -> TargetOutput:
        """The forward of bucket rb over the static buffers (what a capture records; a replay runs none of this)."""
        rmax, dev, table = self.buckets[-1], self._block[1], self._table
        flat = table.view(-1)  # [S' * C]
        write_at, writes, row_prefix, first_row = (dev[k * rmax : k * rmax + rb] for k in range(4))
        rows = torch.where(writes != 0, flat[write_at], -1).to(torch.int32)  # [Rb]: pool rows, -1 for pads
        positions = self.positions[:rb]  # [Rb]
        ancestors = positions.view(-1, 1) if width == 0 else ancestor_table(positions, row_prefix, first_row, width)
        tiles = dev[4 * rmax : 9 * rmax].view(rmax, 5)[:rb].to(torch.int32)  # [Rb, 5]
        tail = dev[9 * rmax : 14 * rmax].view(rmax, 5)[:rb].to(torch.int32)  # [Rb, 5]
        prefix = dev[14 * rmax :].to(torch.int32)  # [S']
        tables = PackedTables(flat, positions, ancestors, prefix, tiles, tail, table.shape[1], width == 0, one_launch,
                              block_m)
        padded = dataclasses.replace(meta, positions=positions)  # the forward reads positions (RoPE) alone from it
        return eager(self.tokens[:rb], padded, PackedKV(caches, meta, rows=rows), hidden_layers,
                     TablesAttention(self.attention, tables))
