"""Attention backends against `jetspec.kernels.reference.tree_attention` on random trees.

For random geometry (Hq a multiple of Hkv, head dim from `head_dims`), a random committed prefix
and a random DFS tree of N pending tokens, the backend's `attend(q, cache, layer, meta, scale)`
must equal the reference

    out_i = softmax_j(q_i . k_j * scale + bias_ij) v_j,  bias_ij = 0 for the prefix and the
    ancestors-or-self of i (interval rule), -inf elsewhere

within `atol`/`rtol` (the backend may compute in another order or precision).
"""

from __future__ import annotations

from typing import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..core.interfaces import AttentionBackend, AttentionMeta, KVCache, TargetInfo
from ..core.tree import DraftTree
from ..kernels.reference import tree_attention
from .kv_semantics import small_info
from .subject import Subject, run_property


def check_attention_numerics(
    s: Subject,
    backend: AttentionBackend,
    new_cache: Callable[[TargetInfo, int], KVCache],
    examples: int,
    seed: int | None,
    device: str,
    dtype: torch.dtype,
    head_dims: tuple[int, ...],
    atol: float,
    rtol: float,
    shrink: bool = True,
) -> None:
    @given(
        kv_heads=st.integers(1, 2), group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from(head_dims),
        prefix=st.integers(0, 40), n=st.integers(1, 24), layer=st.integers(0, 1), data=st.data(),
    )
    def matches_reference(kv_heads, group, head_dim, prefix, n, layer, data):
        parents = [-1] + [data.draw(st.integers(0, i - 1), label=f"parent of {i}") for i in range(1, n)]
        tree = DraftTree.from_parents(list(range(n)), parents)
        info = small_info(2, kv_heads, head_dim, device)
        info = TargetInfo(**{**info.__dict__, "dtype": dtype})
        cache = new_cache(info, prefix + n)
        gen = torch.Generator().manual_seed(prefix * 1000 + n * 10 + head_dim)
        hq = kv_heads * group

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        keys, values = [], []  # `layer`'s K/V in logical order: the prefix's, then the tree's

        def write(count: int) -> None:
            """begin(count), then random K/V [count, Hkv, D] written to both layers."""
            cache.begin(count)
            for l in range(2):
                k, v = rand(count, kv_heads, head_dim), rand(count, kv_heads, head_dim)
                cache.write(l, k, v)
                if l == layer:
                    keys.append(k), values.append(v)

        if prefix:
            write(prefix)
            cache.commit(range(prefix))
        write(n)
        q = rand(n, hq, head_dim)  # [N, Hq, D]
        meta = AttentionMeta.for_tree(tree, prefix, device)
        scale = head_dim**-0.5
        where = f"prefix {prefix}, tree parents {parents}, Hq {hq}, Hkv {kv_heads}, head dim {head_dim}, layer {layer}"
        with s.calling("attention", f"; {where}"):
            got = backend.attend(q, cache, layer, meta, scale)
        want = tree_attention(q.float().cpu(), torch.cat(keys).float().cpu(), torch.cat(values).float().cpu(),
                              AttentionMeta.for_tree(tree, prefix), scale)  # [N, Hq, D]
        if tuple(got.shape) != (n, hq, head_dim):
            s.fail("attention", f"output shape {tuple(got.shape)}, expected {(n, hq, head_dim)}; {where}")
        got = got.float().cpu()
        if not torch.allclose(got, want, atol=atol, rtol=rtol):
            err = (got - want).abs()
            i = int(err.amax(dim=(1, 2)).argmax())
            s.fail("attention", f"differs from tree_attention by {float(err.max()):.3g} (atol {atol}) worst at query {i}; {where}")

    run_property(matches_reference, examples, seed, shrink)
