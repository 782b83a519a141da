"""The conformance kit checks a backend's position-invariant mode bit for bit
(`jetspec/testing/invariance.py`), which tolerance-based numerics cannot:

    every tree node's output == its one-token step's (ancestors committed as prefix)   torch.equal
    every packed sequence's rows == that sequence's `attend` alone                     torch.equal

`triton` passes (and its free-order kernels offered as the mode fail); a mode that tiles keys by
the number of queries, and a packed form that tiles keys by the sequence's offset in the batch,
both pass the tolerance check and fail this one in one line naming them. The plugins below are all the same attention, one row at a time in fp32 with an
online softmax over key blocks; they differ only in where the block boundaries fall."""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from jetspec import Implementation
from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.interfaces import AttentionMeta, BatchedAttention, PositionInvariantAttention
from jetspec.testing import ConformanceError, check_attention_backend
from jetspec.testing.attention import check_attention_numerics
from jetspec.testing.invariance import check_position_invariance
from jetspec.testing.protocol import build
from jetspec.testing.subject import resolve
from support.registry import make_test_registry

REG = make_test_registry()


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMeta, scale: float,
                      block: int, offset: int = 0) -> torch.Tensor:
    """q [N, Hq, D], k/v [T + N, Hkv, D] (logical order) -> [N, Hq, D]. Row u reduces over its keys
    (prefix, then its ancestors-or-self: absolute positions 0 .. T + depth) in blocks that start
    where (position + offset) % block == 0, merged by an online softmax, in fp32. Each row alone,
    so a row's bits depend on its keys and on (block, offset) only."""
    t, sizes = meta.prefix_len, meta.subtree_sizes.tolist()
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float32)  # [N, Hq, D]
    for u in range(q.shape[0]):
        keys = list(range(t)) + [t + j for j in range(u + 1) if u < j + sizes[j]]  # root-down: positions 0 .. T + depth
        kk = k[keys].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        vv = v[keys].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        scores = (q[u].float()[None] * kk).sum(-1) * scale  # [L, Hq]
        cuts = [0] + [p for p in range(1, len(keys)) if (p + offset) % block == 0] + [len(keys)]
        m = torch.full((q.shape[1],), float("-inf"))  # [Hq] running max, sum and weighted values
        l, acc = torch.zeros(q.shape[1]), torch.zeros(q.shape[1], q.shape[2])
        for a, b in zip(cuts, cuts[1:]):
            m_b = scores[a:b].amax(0)  # [Hq]
            p = torch.exp(scores[a:b] - m_b)  # [b - a, Hq]
            new = torch.maximum(m, m_b)
            l = l * torch.exp(m - new) + p.sum(0) * torch.exp(m_b - new)
            acc = acc * torch.exp(m - new)[:, None] + (p[..., None] * vv[a:b]).sum(0) * torch.exp(m_b - new)[:, None]
            m = new
        out[u] = acc / l[:, None]
    return out.to(q.dtype)


class FixedBlocks:
    """Keys in blocks of 16 at fixed absolute positions: position-invariant, and its packed form
    is each sequence alone (the specification the kit holds a mode to)."""

    def attend(self, q, cache, layer, meta, scale):
        k, v = cache.read(layer)
        return blocked_attention(q, k, v, meta, scale, self.block(q.shape[0]))

    def block(self, n: int) -> int:
        return 16

    def position_invariant(self):
        return self

    def attend_batch(self, q, caches, layer, meta, scale):
        out = torch.empty_like(q)  # [R, Hq, D]
        for s, cache in enumerate(caches):
            out[meta.rows(s)] = self.attend(q[meta.rows(s)], cache, layer, meta.seqs[s], scale)
        return out


class QueryCountBlocks(FixedBlocks):
    """Blocks of 8 keys per query of the call, as a fast kernel sizes its split-K by N: close to
    the reference for any N, but a tree node and its one-token step reduce in different orders."""

    def block(self, n: int) -> int:
        return 8 * n


class PackedOffsetBlocks(FixedBlocks):
    """Alone: FixedBlocks. Packed: blocks of 16 over the batch's keys end to end, as a varlen kernel
    tiles them: sequence s's boundaries shift by its offset there (the earlier sequences' T + N)."""

    def attend_batch(self, q, caches, layer, meta, scale):
        out, offset = torch.empty_like(q), 0  # [R, Hq, D]
        for s, cache in enumerate(caches):
            k, v = cache.read(layer)
            out[meta.rows(s)] = blocked_attention(q[meta.rows(s)], k, v, meta.seqs[s], scale, 16, offset)
            offset += k.shape[0]
        return out


def plugin(cls) -> Implementation:
    return Implementation(re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower(), lambda o: cls(), NoOptions)


def fails(cls, match: str, **kw) -> str:
    with pytest.raises(ConformanceError) as e:
        check_attention_backend(plugin(cls), registry=REG, examples=8, shrink=False, **kw)
    message = str(e.value)
    assert "\n" not in message and re.search(match, message), message
    return message


def test_the_plugins_here_claim_the_capability():
    for cls in (FixedBlocks, QueryCountBlocks, PackedOffsetBlocks):
        assert isinstance(cls(), PositionInvariantAttention) and isinstance(cls(), BatchedAttention)


def test_a_backend_whose_blocks_are_fixed_by_position_passes():
    check_attention_backend(plugin(FixedBlocks), registry=REG, examples=4, batched=0)


def check_triton(examples: int) -> None:
    """The kit's invariance check of `triton` in Triton's interpreter on a CPU; split_keys=64 so
    prefixes cross split boundaries; trees over a dense cache, batches over one paged pool."""
    pytest.importorskip("triton")
    s = resolve("attention", "triton", {"split_keys": 64}, REG)
    check_position_invariance(s, build(s), lambda info, c: DenseKVCache(info, c),
                              lambda info, c: PagedKVCache(info, c, PagedCacheOptions(page_size=4)),
                              examples=examples, seed=0, device="cpu", dtype=torch.float32, head_dims=(16, 32), shrink=False)


def test_the_triton_backend_passes_in_its_position_invariant_mode():
    check_triton(examples=6)


def test_the_triton_free_order_kernels_claimed_as_invariant_fail(monkeypatch):
    """Power: triton's own free-order kernels (split-K chosen from the number of queries) offered
    as the mode, or as its packed form, are caught."""
    from jetspec.kernels.triton_backend import TritonAttention

    monkeypatch.setattr(TritonAttention, "position_invariant", lambda self: TritonAttention(self.options))
    with pytest.raises(ConformanceError, match=r"^attention 'triton': position invariance: node \d+"):
        check_triton(examples=6)
    monkeypatch.undo()
    packed = TritonAttention.attend_batch
    monkeypatch.setattr(TritonAttention, "attend_batch", lambda self, *args: packed(TritonAttention(self.options), *args))
    with pytest.raises(ConformanceError, match=r"^attention 'triton': packed invariance: sequence \d+'s node \d+"):
        check_triton(examples=6)


def test_a_mode_whose_key_order_follows_the_query_count_passes_numerics_and_fails_invariance():
    s = resolve("attention", plugin(QueryCountBlocks), None, REG)
    check_attention_numerics(s, QueryCountBlocks(), lambda info, c: DenseKVCache(info, c), 24, 0, "cpu", torch.float32,
                             (8, 16), 1e-4, 1e-4)  # within tolerance: the old check passes it
    fails(QueryCountBlocks, r"^attention 'query-count-blocks': position invariance: node \d+ \(depth \d+\) of the tree "
                            r"differs from its one-token step \(max \|diff\| .*\); prefix \d+, tree parents \[-1")


def test_a_packed_form_whose_key_order_follows_the_batch_fails_invariance():
    fails(PackedOffsetBlocks, r"^attention 'packed-offset-blocks': packed invariance: sequence [1-9]\d*'s node \d+ in the "
                              r"packed batch differs from the sequence alone \(max \|diff\| .*\); prefixes \[\d+, \d+.*\], "
                              r"tree parents \[\[-1")
