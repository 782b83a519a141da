"""`triton` attention backend: paged tree attention in one Triton kernel (plus a split merge).

Caches it reads (capability `kv_rows`): any cache whose `k`, `v` tensors are [L, ..., Hkv, D] with
rows in between (paged: [L, pages, P, Hkv, D]; dense: [L, C, Hkv, D]) and, when physical rows are
not in logical order, an int32 `slot_table` (logical token -> row). The `paged` and `dense`
caches both qualify; anything else raises `IncompatibleError`.

Importing this module does not import triton; the kernel module loads on the first `attend`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core.errors import IncompatibleError
from ..core.batch import BatchMeta, PackedTables
from ..core.interfaces import AttentionMeta, KVCache, RowKVCache
from ..core.on_device import to_device
from .invariant_launch_forms import TAIL_ROWS, key_bytes, one_launch_for, one_launch_tiles, row_tiles
from .row_inputs import RowKernelInputs, ancestor_table


class TritonAttentionOptions(BaseModel):
    """Kernel tiling; every field left None is chosen per call by `choose_config`."""

    model_config = ConfigDict(extra="forbid")

    block_m: Literal[16, 32, 64, 128] | None = Field(None, description="packed (token, head) rows per tile")
    block_n: Literal[16, 32, 64, 128] | None = Field(None, description="keys per inner step")
    num_splits: int | None = Field(None, ge=1, le=512, description="split-K programs per tile")
    num_warps: Literal[1, 2, 4, 8] | None = None
    num_stages: int | None = Field(None, ge=1, le=8)
    autotune: bool = Field(False, description="on CUDA, time a few configs per (N, context) bucket once")
    split_keys: int | None = Field(None, ge=64, le=65536, multiple_of=64,
                                   description="position-invariant mode (exact = true): keys per split-K range, part of "
                                               "the reduction order; default by the model's KV heads (`split_keys_for`)")
    fuse_rope: bool = Field(False, description="position-invariant mode: a one-token step of one sequence does its "
                                               "RoPE (and q/k norm) and K/V write in the attention launch, one kernel a "
                                               "layer fewer (`triton_invariant_rope.py`); the same bits either way")


def split_keys_for(kv_heads: int) -> int:
    """The exact mode's keys per split-K range when the options leave it open: a function of the
    model alone (so a model's plain steps, trees and batches share it). A program per (split, KV
    head): with few KV heads (SmolLM2's 3) 256-key splits keep more programs busy on short contexts;
    with more (Qwen3-8B's 8) the extra splits' partials and folds cost more than they save
    (bench/RESULTS.md, H200 2026-12-04: SmolLM2 decode attention 9.1 vs 13.1 µs a layer at 512
    keys; Qwen3-8B 36 vs 55 µs at 16k keys)."""
    return 256 if kv_heads <= 4 else 512


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_splits: int
    num_warps: int
    num_stages: int


def choose_config(n: int, group: int, kv_heads: int, keys: int, head_dim: int, num_sms: int) -> KernelConfig:
    """Tiles for N queries x `keys` keys: the configurations autotuning found fastest on an H200
    at Qwen3-8B attention shapes (bench/results/kernels.jsonl, 2026-11-28), as a rule.

    Every shape wins with a 5-stage pipeline (the least with which Triton overlaps the next key
    block's K/V copy with this block's math: the slot-map load ahead of each K/V load costs
    stages) and about one wave of programs: split-K until the (tile, kv head) programs fill the
    SMs once. Decode (rows <= 16) and small trees take 128-key blocks; large trees 128-row tiles
    of 64 keys with 8 warps."""
    rows = n * group
    if rows <= 16:
        block_m, block_n, warps = 16, 128, 4
    elif rows <= 64:
        block_m, block_n, warps = 64, 128, 4
    else:
        block_m, block_n, warps = 128, 64, 8
    stages = 5 if head_dim >= 64 else 3
    base = -(-rows // block_m) * kv_heads  # programs without split-K
    blocks = -(-keys // block_n)
    splits = max(1, min(num_sms // base, blocks, 128))
    return KernelConfig(block_m, block_n, splits, warps, stages)


def candidate_configs(n: int, group: int, kv_heads: int, keys: int, head_dim: int, num_sms: int) -> list[KernelConfig]:
    """What autotuning times: the heuristic pick, neighbouring tile shapes (block_m, block_n,
    warps, stages) and, for each, split counts that put about 1/2..6 programs on every SM."""
    base = choose_config(n, group, kv_heads, keys, head_dim, num_sms)
    rows = n * group
    if rows <= 16:  # bandwidth-bound: deep pipelines, few warps, many splits
        shapes = [(16, 64, 4, 5), (16, 64, 4, 7), (16, 32, 4, 7), (16, 32, 2, 6), (16, 64, 2, 5),
                  (16, 128, 4, 5), (16, 128, 4, 6), (16, 64, 4, 3)]
        per_sm = [1, 2, 3, 4, 6]
    elif rows <= 64:
        shapes = [(64, 64, 4, 5), (64, 128, 4, 5), (64, 64, 4, 3), (64, 128, 4, 2), (16, 64, 4, 5), (32, 64, 4, 5)]
        per_sm = [1, 2, 3]
    else:  # compute-bound: big tiles, one wave
        shapes = [(128, 128, 8, 2), (128, 64, 8, 5), (128, 64, 8, 6), (128, 64, 8, 3), (64, 128, 4, 5),
                  (64, 64, 4, 5), (128, 128, 8, 3), (128, 32, 8, 6)]
        per_sm = [0.5, 1, 2]
    shapes.insert(0, (base.block_m, base.block_n, base.num_warps, base.num_stages))
    out: list[KernelConfig] = [base]
    for bm, bn, warps, stages in shapes:
        if bm > max(16, 2 * rows):
            continue
        tiles = -(-rows // bm) * kv_heads
        blocks = -(-keys // bn)
        for k in per_sm:
            cfg = KernelConfig(bm, bn, max(1, min(int(k * num_sms) // tiles, blocks, 256)), warps, stages)
            if cfg not in out:
                out.append(cfg)
    return out


class TritonAttention(RowKernelInputs):
    """Tree attention of N queries over a paged (or dense) KV cache, mask from the DFS intervals.
    Graph-safe: with `meta.prefix_len_t` set, every input is read from device memory."""

    graph_safe: ClassVar[bool] = True
    backend_name: ClassVar[str] = "triton"

    def __init__(self, options: TritonAttentionOptions | None = None, invariant: bool = False):
        self.options = options or TritonAttentionOptions()
        self.invariant = invariant  # the position-invariant kernel (triton_invariant_attention.py)
        super().__init__()
        self._tuned: dict[tuple, KernelConfig] = {}
        self._packed: tuple | None = None  # (BatchMeta, block_m, its packed device inputs): per forward
        self._packed_invariant: tuple[BatchMeta, PackedTables] | None = None  # exact = true: per forward
        self._plan: tuple | None = None  # (BatchMeta, cache ids, slot maps, row counts): per forward
        self._form: tuple[AttentionMeta, int] | None = None  # exact mode's launch form: per forward

    def position_invariant(self) -> "TritonAttention":
        return TritonAttention(self.options, invariant=True)

    def attend(self, q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        q = q.contiguous()  # [N, Hq, D]
        k_rows, v_rows, slots = self._kv_rows(cache, layer)  # [R, Hkv, D] x 2, [>= T + N] int32
        n, hq, d = q.shape
        hkv = k_rows.shape[1]
        self._check(q, k_rows, meta, slots)
        if self.invariant:
            return self._attend_invariant(q, k_rows, v_rows, slots, layer, meta, scale)
        from .triton_tree_attention import paged_tree_attention  # lazy: triton only when used

        sizes, prefix = self._forward_tensors(meta, q.device)
        cfg = self.config(n, hq // hkv, hkv, meta.prefix_len + n, d, q, lambda c: paged_tree_attention(
            q, k_rows, v_rows, slots, sizes, prefix, scale, c.block_m, c.block_n, c.num_splits, c.num_warps, c.num_stages))
        return paged_tree_attention(q, k_rows, v_rows, slots, sizes, prefix, scale,
                                    cfg.block_m, cfg.block_n, cfg.num_splits, cfg.num_warps, cfg.num_stages)

    def attend_roped(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None, head_dim: int, cache: KVCache,
                     layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor | None:
        """`AttendsRoped` (`fuse_rope`): a one-token step's RoPE, K/V write and attention in one launch -> [1, Hq, D];
        None where this step is not that (the caller runs `rope_write`, then `attend`)."""
        if not (self.invariant and self.options.fuse_rope and qkv.shape[0] == 1 and isinstance(cache, RowKVCache)):
            return None
        from .triton_invariant_rope import invariant_rope_attention

        k_rows, v_rows, slots = self._kv_rows(cache, layer)  # [R, Hkv, D] x 2, [>= T + 1] int32
        hkv = k_rows.shape[1]
        q = qkv.view(1, -1, head_dim)[:, : qkv.shape[1] // head_dim - 2 * hkv]  # [1, Hq, D]: the row's q heads, a view
        if q.shape[1] // hkv > TAIL_ROWS:  # one tile of rows: the one-launch form a step of one token takes
            return None
        self._check(q, k_rows, meta, slots)
        positions, ancestors, prefix = self._invariant_tensors(meta, layer, qkv.device)
        return invariant_rope_attention(qkv, cos, sin, qk_norm, k_rows, v_rows, slots, positions, ancestors, prefix, scale,
                                        self._split_blocks(k_rows), head_dim, meta.chain)

    def attend_batch(self, q: torch.Tensor, caches: Sequence[KVCache], layer: int, meta: BatchMeta,
                     scale: float) -> torch.Tensor:
        """`BatchedAttention`: the packed rows of S sequences in one launch (`packed_tree_attention`,
        position-invariant: `packed_invariant_attention`, one or two; a tile table maps each tile to
        its sequence's rows, T_s and slot map). The caches must share one pool (kv_cache 'paged',
        whose `sequences` the batched engine uses); one sequence may have any cache this backend reads."""
        q = q.contiguous()  # [R, Hq, D]
        k_rows, v_rows, _ = self._kv_rows(caches[0], layer)  # [rows, Hkv, D] x 2
        slots, sizes = self._batch_plan(q, k_rows, caches, meta)
        from .triton_tree_attention import packed_tree_attention  # lazy: triton only when used

        r, hq, d = q.shape
        hkv = k_rows.shape[1]
        if self.invariant:
            return self._attend_batch_invariant(q, k_rows, v_rows, slots, meta, scale, hq // hkv, max(sizes))
        keys = max(m.prefix_len + n for m, n in zip(meta.seqs, sizes))
        cfg = self.config(max(sizes), hq // hkv, hkv, keys, d, q)
        splits = self.options.num_splits or max(1, cfg.num_splits // meta.num_sequences)  # the sequences fill the GPU too
        flat, subtree, prefix, tiles = self._packed_inputs(meta, slots, hq // hkv, cfg.block_m, q.device)
        return packed_tree_attention(q, k_rows, v_rows, flat, subtree, prefix, tiles, scale, cfg.block_m, cfg.block_n,
                                     splits, cfg.num_warps, cfg.num_stages)

    def _batch_plan(self, q: torch.Tensor, k_rows: torch.Tensor, caches: Sequence[KVCache],
                    meta: BatchMeta) -> tuple[list[torch.Tensor], list[int]]:
        """-> each sequence's slot map, its row count: checked and gathered at the forward's first
        layer, the same for every later one (a layer's q and pool rows have the same shapes)."""
        if self._plan is None or self._plan[0] is not meta or self._plan[1] != tuple(map(id, caches)):
            if any(not isinstance(c, RowKVCache) or c.k is not caches[0].k for c in caches[1:]):
                raise IncompatibleError("the triton attention backend verifies a batch whose sequences share one page pool "
                                        "(kv_cache 'paged'); these sequences have separate caches")
            slots = [self._kv_rows(c, 0)[2] for c in caches]
            for s, m in enumerate(meta.seqs):
                self._check(q[meta.rows(s)], k_rows, m, slots[s])
            sizes = [meta.cu_rows[s + 1] - meta.cu_rows[s] for s in range(meta.num_sequences)]
            self._plan = (meta, tuple(map(id, caches)), slots, sizes)
        return self._plan[2], self._plan[3]

    def _packed_inputs(self, meta: BatchMeta, slots: list[torch.Tensor], group: int, block_m: int, device: torch.device):
        """-> slot maps end to end [sum_s (T_s + N_s)] int32, subtree sizes [R] int32, T_s [S] int32,
        tile table [tiles, 5] int32: made once per forward (the first layer), shared by the rest."""
        if self._packed is None or self._packed[0] is not meta or self._packed[1] != block_m:
            from .triton_tree_attention import pack_tiles

            lengths = [m.prefix_len + m.num_queries for m in meta.seqs]
            starts = [sum(lengths[:s]) for s in range(len(lengths))]
            flat = torch.cat([sl[:n] for sl, n in zip(slots, lengths)]).to(device=device, dtype=torch.int32)
            tiles = to_device(pack_tiles(list(meta.cu_rows), starts, group, block_m), device)
            self._packed = (meta, block_m, (flat, meta.subtree_sizes.to(device=device, dtype=torch.int32).contiguous(),
                                  meta.prefix_lens.to(device=device, dtype=torch.int32), tiles))
        return self._packed[2]

    def _attend_batch_invariant(self, q, k_rows, v_rows, slots: list[torch.Tensor], meta: BatchMeta, scale: float,
                                group: int, largest: int) -> torch.Tensor:
        """exact = true: the batch's `PackedTables` — tiles sized for the largest tree (no bit
        depends on it), each row's ancestors within its own tree [R, largest], the TAIL_ROWS tile
        table — made at the forward's first layer, shared by the rest."""
        if self._packed_invariant is None or self._packed_invariant[0] is not meta:  # once per forward
            from .triton_tree_attention import pack_tiles

            chain = all(m.chain for m in meta.seqs)
            rows = [m.num_queries * group for m in meta.seqs]  # packed rows of each sequence
            block_m = self.options.block_m or row_tiles(largest * group)[0]  # launch 1's, were it two
            one = one_launch_for(rows, [m.prefix_len for m in meta.seqs], block_m, chain, _key_bytes(k_rows))
            block_m = self.options.block_m or one_launch_tiles(one, chain, block_m)
            flat, _, prefix, tiles = self._packed_inputs(meta, slots, group, block_m, q.device)
            positions, seq = meta.positions.to(q.device), meta.seq_ids.to(q.device)  # [R] int64 each
            first = to_device(torch.tensor(meta.cu_rows[:-1]), q.device)[seq]  # [R]: its sequence's first row
            ancestors = positions.view(-1, 1) if chain else ancestor_table(
                positions, meta.prefix_lens.to(q.device)[seq], first, largest)  # [R, max N_s]
            starts = [sum(m.prefix_len + m.num_queries for m in meta.seqs[:s]) for s in range(meta.num_sequences)]
            tail = to_device(pack_tiles(list(meta.cu_rows), starts, group, TAIL_ROWS), q.device)
            tables = PackedTables(flat, positions, ancestors, prefix, tiles, tail, max(sl.numel() for sl in slots), chain,
                                  one, block_m)
            self._packed_invariant = (meta, tables)
        return self.attend_tables(q, k_rows, v_rows, self._packed_invariant[1], scale)

    def attend_tables(self, q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, tables: PackedTables,
                      scale: float) -> torch.Tensor:
        """`AttendsPackedTables` (the position-invariant mode): the packed launch over `tables`
        (`attend_batch` makes them per forward; a CUDA graph keeps them in static buffers)."""
        from .triton_invariant_attention import packed_invariant_attention

        if not self.invariant:
            raise IncompatibleError("packed attention tables are read by the position-invariant mode (exact = true)")
        o = self.options
        return packed_invariant_attention(q.contiguous(), k_rows, v_rows, tables.slots, tables.positions, tables.ancestors,
                                          tables.prefix_lens, tables.tiles, tables.tail, tables.capacity, scale,
                                          self._split_blocks(k_rows), tables.chain, tables.block_m, o.num_warps or 0,
                                          o.num_stages or 0, one_launch=int(tables.one_launch))

    def launch_form(self, rows: int, prefix_len: int, chain: bool, key_bytes: int) -> int:
        """`LaunchForms`: exact mode's one launch (1) or two (0) for one sequence's `rows` packed
        (token, head) rows over `prefix_len` committed keys (`invariant_launch_forms.py`); 0 otherwise."""
        if not self.invariant:
            return 0
        return int(one_launch_for([rows], [prefix_len], self.options.block_m or row_tiles(rows)[0], chain, key_bytes))

    def _attend_invariant(self, q, k_rows, v_rows, slots, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        from .triton_invariant_attention import invariant_tree_attention

        positions, ancestors, prefix = self._invariant_tensors(meta, layer, q.device)
        o = self.options  # tiling, if set: free to follow the shape (no bit depends on it)
        if layer == 0 or self._form is None or self._form[0] is not meta:  # once per forward, as its ancestor table
            rows = q.shape[0] * (q.shape[1] // k_rows.shape[1])
            self._form = (meta, self.launch_form(rows, meta.prefix_len, meta.chain, _key_bytes(k_rows)))
        one = self._form[1]
        return invariant_tree_attention(q, k_rows, v_rows, slots, positions, ancestors, prefix, scale,
                                        self._split_blocks(k_rows), meta.chain, o.block_m or 0, o.num_warps or 0,
                                        o.num_stages or 0, one_launch=one)

    def _split_blocks(self, k_rows: torch.Tensor) -> int:
        """Key blocks per split-K range of the exact mode (k_rows [rows, Hkv, D])."""
        from .triton_invariant_attention import BLOCK_N

        return (self.options.split_keys or split_keys_for(k_rows.shape[1])) // BLOCK_N

    # ------------------------------------------------------------------ configs
    def config(self, n: int, group: int, kv_heads: int, keys: int, head_dim: int, q: torch.Tensor,
               run: Callable[[KernelConfig], torch.Tensor] | None = None) -> KernelConfig:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        o = self.options
        if o.autotune and q.is_cuda:  # tune once per bucket, outside graph capture; reuse inside
            key = (n, group, kv_heads, 1 << max(0, keys - 1).bit_length(), head_dim, q.dtype)
            if key not in self._tuned and run is not None and not _capturing():
                self._tuned[key] = _fastest(candidate_configs(n, group, kv_heads, keys, head_dim, sms), run)
            if key in self._tuned:
                return self._tuned[key]
        cfg = choose_config(n, group, kv_heads, keys, head_dim, sms)
        return KernelConfig(o.block_m or cfg.block_m, o.block_n or cfg.block_n, o.num_splits or cfg.num_splits,
                            o.num_warps or cfg.num_warps, o.num_stages or cfg.num_stages)

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def _check(q: torch.Tensor, k_rows: torch.Tensor, meta: AttentionMeta, slots: torch.Tensor) -> None:
        n, hq, d = q.shape
        hkv = k_rows.shape[1]
        if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise IncompatibleError("the triton attention backend needs a CUDA device (or TRITON_INTERPRET=1 to test on a CPU)")
        if d != k_rows.shape[2] or d & (d - 1) or not 16 <= d <= 128:
            raise IncompatibleError(f"the triton attention backend supports head dims 16, 32, 64, 128; got q {d}, cache {k_rows.shape[2]}")
        if hq % hkv:
            raise IncompatibleError(f"{hq} query heads cannot share {hkv} kv heads evenly")
        if q.dtype != k_rows.dtype or q.device != k_rows.device:
            raise IncompatibleError(f"queries are {q.dtype} on {q.device} but the KV cache is {k_rows.dtype} on {k_rows.device}")
        if meta.num_queries != n or meta.prefix_len + n > slots.numel():
            raise IncompatibleError(
                f"{n} queries after {meta.prefix_len} committed keys do not match the attention meta "
                f"({meta.num_queries} queries) or the cache ({slots.numel()} slots)"
            )


def _capturing() -> bool:
    return torch.cuda.is_current_stream_capturing() or torch.compiler.is_compiling()


def _fastest(configs: list[KernelConfig], run: Callable[[KernelConfig], torch.Tensor]) -> KernelConfig:
    """The config with the least GPU time. Each runs once eagerly first (compiles it; one that
    does not fit this GPU, e.g. shared memory, is skipped), then is timed replaying a CUDA graph,
    as it runs inside the engine: eager timing of a ~20 us kernel mostly measures launch overhead."""
    from triton.testing import do_bench, do_bench_cudagraph

    times = {}
    for cfg in configs:
        try:
            run(cfg)
            torch.cuda.synchronize()
        except Exception:
            continue
        try:
            times[cfg] = do_bench_cudagraph(lambda: run(cfg), rep=10, return_mode="median")
        except Exception:
            torch.cuda.synchronize()
            try:
                times[cfg] = do_bench(lambda: run(cfg), warmup=5, rep=20, return_mode="median")
            except Exception:
                continue
    return min(times, key=times.get)


def _key_bytes(k_rows: torch.Tensor) -> int:
    """One committed key's bytes in a layer's pool rows k_rows [rows, Hkv, D] (its V alike)."""
    return key_bytes(k_rows.shape[1], k_rows.shape[2], k_rows.element_size())
