"""Packed verify forwards of several sequences: the metadata and the adapters a target uses.

S sequences each bring a draft tree (N_s nodes, DFS pre-order) over their own committed prefix
(T_s tokens). Their trees are laid end to end into R = sum_s N_s rows, ragged, no padding:

    rows of sequence s        cu_rows[s] .. cu_rows[s + 1] - 1          (cu_rows [S + 1])
    row r = cu_rows[s] + i    seq_ids[r] = s,  positions[r] = T_s + depth_s(i),
                              subtree_sizes[r] = size of node i's subtree in tree s

Row r attends to key t of sequence s = seq_ids[r] only (never another sequence's), under that
sequence's tree mask: t < T_s (its committed prefix), or t = T_s + j with
j <= i < j + subtree_sizes[cu_rows[s] + j] (an ancestor-or-self). Everything that is not
attention (embeddings, norms, projections, MLP, LM head) is row-wise, so one forward of R rows
does all S verifications at the price of one wider matrix product.

`PackedKV` and `PackedAttention` let a model written for one sequence (it calls
`cache.write(layer, k, v)` and `attention.attend(q, cache, layer, meta, scale)`) run a packed
batch unchanged: the write is split into each sequence's cache, the attention goes to the
backend's `attend_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import IncompatibleError
from .on_device import to_device
from .interfaces import (AttentionBackend, AttentionMeta, BatchedAttention, Drafter, KVCache, RowKVCache, TargetInfo,
                         Verifier)


@dataclass(frozen=True)
class BatchMeta:
    """Where the R rows of one packed forward sit (vocabulary in the module docstring)."""

    seqs: tuple[AttentionMeta, ...]  # [S] each sequence's own metadata (prefix_len, its rows' positions/sizes)
    cu_rows: tuple[int, ...]  # [S + 1] cumulative row offsets, cu_rows[0] = 0, cu_rows[S] = R
    seq_ids: torch.Tensor  # [R] int64, the sequence of each row
    positions: torch.Tensor  # [R] int64, RoPE position of each row (its T_s + depth)
    subtree_sizes: torch.Tensor  # [R] int64, DFS interval encoding, within each row's own tree
    prefix_lens: torch.Tensor  # [S] int64, T_s

    @staticmethod
    def pack(seqs: Sequence[AttentionMeta], packed: tuple[torch.Tensor, torch.Tensor] | None = None) -> BatchMeta:
        """The packed metadata of sequences whose rows come in this order, each contiguous.
        `packed`: (positions [R], subtree sizes [R]) already end to end on the device (the
        step's one tree upload, whose columns the sequences' metas view), used as they are."""
        if not seqs:
            raise ValueError("a packed forward needs at least one sequence")
        sizes = [m.num_queries for m in seqs]
        cu = [0]
        for n in sizes:
            cu.append(cu[-1] + n)
        device = seqs[0].positions.device
        ids = np.concatenate((np.repeat(np.arange(len(sizes)), sizes), [m.prefix_len for m in seqs]))  # [R + S]
        ids = to_device(torch.from_numpy(ids.astype(np.int64)), device)  # seq_ids and T_s: one copy
        positions, subtree = packed if packed is not None else (
            torch.cat([m.positions.to(device) for m in seqs]),
            torch.cat([m.subtree_sizes.to(device=device, dtype=torch.int64) for m in seqs]))
        return BatchMeta(seqs=tuple(seqs), cu_rows=tuple(cu), seq_ids=ids[: cu[-1]], positions=positions,
                         subtree_sizes=subtree, prefix_lens=ids[cu[-1] :])

    @staticmethod
    def make_dummy(tree_sizes: Sequence[int], prefix_lens: Sequence[int]) -> BatchMeta:
        """Chains of the given sizes over the given prefixes (tests)."""
        return BatchMeta.pack([AttentionMeta.for_chain(n, t) for n, t in zip(tree_sizes, prefix_lens)])

    @property
    def num_sequences(self) -> int:
        return len(self.seqs)

    @property
    def num_queries(self) -> int:
        return self.cu_rows[-1]

    def rows(self, s: int) -> slice:
        """The rows of sequence s."""
        return slice(self.cu_rows[s], self.cu_rows[s + 1])


@dataclass(frozen=True)
class PackedTables:
    """What a packed position-invariant attention launch reads (`AttendsPackedTables`), all on the
    device: made per forward by the backend (`attend_batch`), or kept in a CUDA graph's static
    buffers (`targets/decoder/batch_graphs.py`), which may pad rows and tiles (a pad tile has no rows).

        slots        [*] int32        the sequences' slot maps; sequence s's starts at its tiles' column 3
        positions    [R] int64        T_s + depth of each row
        ancestors    [R, W] int32     each row's ancestors within its own tree, W >= the largest tree
                                      (every sequence a chain: positions.view(-1, 1), unread)
        prefix_lens  [*] int32        T_s, at its tiles' column 4
        tiles        [tiles, 5] int32 launch 1's tiles of block_m rows: (first row, N_s, first tile of s,
                                      slot map start, prefix index); tail: the same for the kernel's tail tiles
    """

    slots: torch.Tensor
    positions: torch.Tensor
    ancestors: torch.Tensor
    prefix_lens: torch.Tensor
    tiles: torch.Tensor
    tail: torch.Tensor
    capacity: int  # the longest slot map: it fixes the split count
    chain: bool  # every sequence a chain (decode steps, prefills)
    one_launch: bool  # chain, or every tree small enough for one launch (`one_launch_for`)
    block_m: int  # launch 1's rows per tile (no bit depends on it)


class PackedKV:
    """The S caches of a packed forward, as the one `cache` a single-sequence model writes to:
    `write(layer, k [R, Hkv, D], v)` stores rows `meta.rows(s)` in `caches[s]`; a kernel that
    writes K/V in place (`exact = true`) takes `shared_rows()` instead. Reading goes through
    `PackedAttention`, never through this object. `rows`: the pool rows given (a CUDA graph's
    static ones, -1 for a pad row that writes nothing) instead of gathered from the slot maps."""

    def __init__(self, caches: Sequence[KVCache], meta: BatchMeta, rows: torch.Tensor | None = None):
        if len(caches) != meta.num_sequences:
            raise ValueError(f"{len(caches)} caches for {meta.num_sequences} packed sequences")
        self.caches, self.meta = list(caches), meta
        self._rows: torch.Tensor | None = rows

    def shared_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> k, v [L, ..., Hkv, D]: the pool every sequence's cache shares (`RowKVCache`), and
        rows [R] int32: packed row r = cu_rows[s] + i writes its K/V to pool row
        caches[s].slot_table[T_s + i], the pending slot `begin` reserved for it (made on first
        use, once per forward). IncompatibleError where the caches do not share one pool."""
        first = self.caches[0]
        if self._rows is None:  # once per forward: every layer writes to the same rows
            if not all(isinstance(c, RowKVCache) and c.k is first.k and c.v is first.v for c in self.caches):
                raise IncompatibleError("exact = true writes a batch's K/V into one page pool its sequences share "
                                        "(kv_cache 'paged'); these sequences have separate caches")
            parts = []
            for m, c in zip(self.meta.seqs, self.caches):
                t, n = m.prefix_len, m.num_queries
                if c.slot_table is None:  # rows in logical order
                    parts.append(torch.arange(t, t + n, dtype=torch.int32, device=first.k.device))
                else:
                    parts.append(c.slot_table[t : t + n])
            self._rows = torch.cat(parts).to(dtype=torch.int32)  # [R]
        return first.k, first.v, self._rows

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for s, cache in enumerate(self.caches):
            rows = self.meta.rows(s)
            cache.write(layer, k[rows], v[rows])


class PackedAttention:
    """A `BatchedAttention` backend as the `AttentionBackend` a single-sequence model calls:
    `attend(q, packed, layer, meta, scale)` -> `backend.attend_batch(q, packed.caches, ...)`."""

    def __init__(self, backend: BatchedAttention):
        self.backend = backend

    def attend(self, q: torch.Tensor, cache: PackedKV, layer: int, meta: BatchMeta, scale: float) -> torch.Tensor:
        return self.backend.attend_batch(q, cache.caches, layer, meta, scale)


def batch_attention_problem(attention: AttentionBackend) -> str | None:
    """Why `attention` cannot serve a packed forward, or None."""
    if isinstance(attention, BatchedAttention):
        return None
    return (f"attention backend {type(attention).__name__} has no batched form (attend_batch); batched decoding "
            "(batch_size > 1) runs with attention 'torch' or 'triton' (not 'cute' yet)")


def batch_exactness_note(info: TargetInfo, batch_size: int) -> str | None:
    """The line a user sees before a batch runs where it is not known to be bit-exact: with
    exact = false the GEMMs and attention may reduce differently for different row counts, so an
    output can part from its batch-1 output where the target's logits nearly tie. None at batch 1,
    for an exact target (`info.exact`: every row's bits are its own sequence's; tests/targets/
    test_lossless_exact_batched.py) and in float32 on the CPU (tests/test_lossless_batched.py)."""
    if batch_size <= 1 or info.exact or (info.device.type == "cpu" and info.dtype == torch.float32):
        return None
    dtype = str(info.dtype).removeprefix("torch.")
    return (f"jetspec: note: batched decoding (batch_size {batch_size}) runs without exact mode: on {info.device.type} in "
            f"{dtype} an output can differ from its batch-1 output where the target's logits nearly tie (exact = true, "
            "attention 'triton' over a 'paged' cache, keeps every output bit-exact)")


@dataclass
class SequenceParts:
    """The adapter through which single-sequence plugins serve a batch: each slot of the engine
    owns one drafter and one verifier (they keep per-sequence state: a drafter's index or head KV,
    a sampling verifier's random stream) and calls them exactly as `Pipeline.generate` does for
    one sequence. The scorer is shared: `build` keeps no state between calls."""

    drafter: Drafter | None
    verifier: Verifier

    @staticmethod
    def factory(new_drafter: Callable[[], Drafter] | None, new_verifier: Callable[[], Verifier]) -> Callable[[], SequenceParts]:
        return lambda: SequenceParts(new_drafter() if new_drafter else None, new_verifier())
