"""KV-cache semantics, checked against a reference model written as plainly as possible.

A cache holds `committed` entries per layer, then `pending` ones:

    begin(n)      pending := n slots (CapacityError, state unchanged, if committed + n > capacity)
    write(l,k,v)  layer l's pending entries := k, v            k, v [n, Hkv, D]
    read(l)       committed ++ pending entries of layer l       2 x [T + n, Hkv, D]
    commit(keep)  committed := committed ++ pending[keep]; pending := 0
    reset()       committed := pending := 0

`check_kv_semantics` runs random programs of these operations (random geometry, capacity,
sizes, kept subsets, overflows and resets) on the cache under test and on `ReferenceKV`, and
compares every `read` exactly (a cache moves values, it never computes them).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..core.errors import CapacityError
from ..core.interfaces import KVCache, TargetInfo
from .protocol import check_instance
from .subject import Subject, run_property


class ReferenceKV:
    """The semantics above as per-layer lists of committed / pending tensors."""

    def __init__(self, layers: int, capacity: int):
        self.capacity = capacity
        self.k: list[list[torch.Tensor]] = [[] for _ in range(layers)]  # per layer: committed [Hkv, D] rows
        self.v: list[list[torch.Tensor]] = [[] for _ in range(layers)]
        self.pk: list[list[torch.Tensor]] = [[] for _ in range(layers)]  # per layer: pending rows
        self.pv: list[list[torch.Tensor]] = [[] for _ in range(layers)]
        self.pending = 0

    @property
    def committed(self) -> int:
        return len(self.k[0])

    def fits(self, n: int) -> bool:
        return self.committed + n <= self.capacity

    def begin(self, n: int) -> None:
        self.pending = n

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.pk[layer], self.pv[layer] = list(k), list(v)

    def read(self, layer: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.k[layer] + self.pk[layer], self.v[layer] + self.pv[layer]

    def commit(self, keep: Sequence[int]) -> None:
        for layer in range(len(self.k)):
            self.k[layer] += [self.pk[layer][i] for i in keep]
            self.v[layer] += [self.pv[layer][i] for i in keep]
            self.pk[layer], self.pv[layer] = [], []
        self.pending = 0

    def reset(self) -> None:
        for layer in range(len(self.k)):
            self.k[layer], self.v[layer], self.pk[layer], self.pv[layer] = [], [], [], []
        self.pending = 0


def small_info(layers: int, kv_heads: int, head_dim: int, device: torch.device | str = "cpu") -> TargetInfo:
    return TargetInfo(
        name="kit", architecture="kit", vocab_size=96, hidden_size=kv_heads * head_dim, num_layers=layers,
        num_kv_heads=kv_heads, head_dim=head_dim, max_positions=4096, dtype=torch.float32, device=torch.device(device),
    )


# an operation: ("reset",) | ("round", n, keep): begin(n), write every layer, commit the bits of keep
OPS = st.lists(
    st.one_of(st.tuples(st.just("round"), st.integers(1, 24), st.integers(0, (1 << 24) - 1)), st.tuples(st.just("reset"))),
    min_size=1,
    max_size=12,
)


def check_kv_semantics(s: Subject, new_cache: Callable[[TargetInfo, int], KVCache], examples: int, seed: int | None, device: str, shrink: bool = True) -> None:
    @given(
        layers=st.integers(1, 3), kv_heads=st.integers(1, 3), head_dim=st.sampled_from([4, 8, 16]),
        capacity=st.integers(1, 64), ops=OPS,
    )
    def semantics(layers, kv_heads, head_dim, capacity, ops):
        info = small_info(layers, kv_heads, head_dim, device)
        cache = check_instance(s, new_cache(info, capacity), KVCache)
        ref = ReferenceKV(layers, capacity)
        gen = torch.Generator().manual_seed(len(ops) * 7919 + capacity)
        shape = f"{layers} layers, {kv_heads} kv heads, head dim {head_dim}, capacity {capacity}"
        if cache.capacity < capacity:
            s.fail("kv semantics", f"capacity {cache.capacity} is less than the {capacity} asked for ({shape})")
        history: list[str] = []

        def fail(what: str) -> None:
            s.fail("kv semantics", f"{what} after [{'; '.join(history[-6:])}] ({shape})")

        def compare(when: str) -> None:
            if (cache.committed, cache.pending) != (ref.committed, ref.pending):
                fail(f"{when}: committed/pending are {cache.committed}/{cache.pending}, expected {ref.committed}/{ref.pending}")
            for layer in range(layers):
                k, v = cache.read(layer)
                rk, rv = ref.read(layer)
                for name, got, want in (("keys", k, rk), ("values", v, rv)):
                    want_t = torch.stack(want) if want else torch.zeros(0, kv_heads, head_dim)
                    if tuple(got.shape) != tuple(want_t.shape) or not torch.equal(got.detach().cpu().float(), want_t):
                        bad = _first_bad_row(got.detach().cpu().float(), want_t)
                        fail(f"{when}: read({layer}) {name} differ (shape {tuple(got.shape)} vs {tuple(want_t.shape)}, first wrong entry {bad})")

        for op in ops:
            if op[0] == "reset":
                cache.reset()
                ref.reset()
                history.append("reset")
                compare("reset")
                continue
            _, n, keep_bits = op
            if not ref.fits(n):
                history.append(f"begin({n}) overflow")
                try:
                    cache.begin(n)
                except CapacityError:
                    if cache.committed != ref.committed:
                        fail(f"begin({n}) raised CapacityError but changed committed to {cache.committed}")
                    continue
                fail(f"begin({n}) with {ref.committed} committed of capacity {capacity} did not raise CapacityError")
            cache.begin(n)
            ref.begin(n)
            for layer in range(layers):
                k = torch.randn(n, kv_heads, head_dim, generator=gen)  # [n, Hkv, D]
                v = torch.randn(n, kv_heads, head_dim, generator=gen)
                cache.write(layer, k.to(device), v.to(device))
                ref.write(layer, k, v)
            history.append(f"begin({n}) write")
            compare("write")
            keep = [i for i in range(n) if keep_bits >> i & 1]
            cache.commit(keep)
            ref.commit(keep)
            history.append(f"commit({keep})")
            compare("commit")

    with s.calling("kv semantics"):
        run_property(semantics, examples, seed, shrink)


def _first_bad_row(got: torch.Tensor, want: torch.Tensor) -> int | str:
    if got.shape != want.shape:
        return "shape"
    rows = (got != want).flatten(1).any(dim=1).nonzero()
    return int(rows[0]) if rows.numel() else "none"
