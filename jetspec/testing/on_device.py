"""Checks of the device path's two capabilities (`core/on_device.py`): a component that offers one
does on the device exactly what it does on the host, or the kit fails with one line naming it.

* verifier `accept_on_device` (`AcceptsOnDevice`, where the pipeline would call it:
  `accepts_on_device`): on random trees and logits, the result is an int64 tensor [2D + 3], its
  path entries are node indices (a fixed-size gather reads them all), and unpacked it is the
  path and committed tokens of `accept` on the same tree, logits and state;
* KV cache `stage_commit` (`CommitsOnDevice`): on random rounds, `stage_commit(keep padded with any
  pending indices)` then `commit(keep)` reads back exactly what `commit(keep)` alone does.

Neither shows in the lossless runs: a CPU pipeline takes the host path ("auto"), and a device
path that accepts less than the host is still lossless, only slower; so each is checked here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..core.interfaces import CommitsOnDevice, DecodeState, KVCache, ResettableVerifier, TargetInfo, accepts_on_device
from ..core.on_device import TreeUpload, unpack
from .kv_semantics import small_info
from .models import VOCAB
from .strategies import trees_and_choices
from .subject import Subject, run_property


def check_accepts_on_device(s: Subject, new_verifier: Callable[[], Any], examples: int, seed: int | None,
                            device: str = "cpu", shrink: bool = True) -> None:
    """accept_on_device == accept, on logits whose argmax at node i is choice[i] (often a child's
    token: deep paths). Each side gets a fresh verifier, reset with the same state."""
    if not accepts_on_device(new_verifier()):
        return

    @given(case=trees_and_choices(VOCAB), noise=st.integers(0, 1 << 16))
    def device_accepts_what_the_host_accepts(case, noise):
        tree, choice = case
        logits = torch.randn(tree.size, VOCAB, generator=torch.Generator().manual_seed(noise))  # [N, V]
        logits[torch.arange(tree.size), torch.tensor(choice)] = 100.0
        state = DecodeState(tokens=[1, 2, int(tree.tokens[0])], prompt_len=2)
        host, on_device = new_verifier(), new_verifier()
        for v in (host, on_device):
            if isinstance(v, ResettableVerifier):
                v.reset(state)
        where = f" (tree parents {tree.parents.tolist()}, target choices {choice})"
        with s.calling("accept_on_device", where):
            acc = host.accept(tree, logits, state)
            dtree = TreeUpload(device)(tree, len(state.tokens) - 1)
            packed = on_device.accept_on_device(dtree, logits.to(device), state)
        d = dtree.max_depth
        if not (isinstance(packed, torch.Tensor) and packed.shape == (2 * d + 3,) and packed.dtype == torch.int64):
            got = f"{tuple(packed.shape)} {packed.dtype}" if isinstance(packed, torch.Tensor) else type(packed).__name__
            s.fail("accept_on_device", f"returned {got}; expected an int64 tensor of shape [{2 * d + 3}]{where}")
        values = packed.tolist()
        if not all(0 <= j < tree.size for j in values[1 : d + 2]):
            s.fail("accept_on_device", f"path entries {values[1 : d + 2]} are not all node indices in [0, {tree.size}){where}")
        path, tokens = unpack(values)
        if (path, tokens) != (list(acc.path), acc.new_tokens(tree)):
            s.fail("accept_on_device", f"accepts path {path} committing {tokens} on the device, but accept keeps "
                                       f"path {list(acc.path)} committing {acc.new_tokens(tree)}{where}")

    run_property(device_accepts_what_the_host_accepts, examples, seed, shrink)


# one round: n tokens verified, the kept drafts (with the root: a root-down path, ascending), and
# the pending indices that pad the staged index past the path (what a fixed-size gather reads)
ROUNDS = st.lists(
    st.integers(1, 20).flatmap(lambda n: st.tuples(
        st.just(n), st.sets(st.integers(1, n - 1)) if n > 1 else st.just(set()),
        st.lists(st.integers(0, n - 1), max_size=4))),
    min_size=1, max_size=8,
)


def check_commits_on_device(s: Subject, new_cache: Callable[[TargetInfo, int], KVCache], examples: int,
                            seed: int | None, device: str = "cpu", shrink: bool = True) -> None:
    """stage_commit(keep + pad) then commit(keep) == commit(keep), every read of every layer exact."""
    info = small_info(2, 2, 4, device)
    if not isinstance(new_cache(info, 8), CommitsOnDevice):
        return

    @given(rounds=ROUNDS, noise=st.integers(0, 1 << 16))
    def a_staged_commit_reads_what_a_host_commit_does(rounds, noise):
        capacity = sum(n for n, _, _ in rounds)
        host, staged = new_cache(info, capacity), new_cache(info, capacity)
        g = torch.Generator().manual_seed(noise)
        for r, (n, drafts, pad) in enumerate(rounds):
            keep = [0] + sorted(drafts)
            staged_keep = (keep + pad)[:n]  # M <= n, as a tree's D + 1 <= N
            where = f" (round {r}: {n} pending, commit({keep}) after stage_commit({staged_keep}))"
            with s.calling("stage_commit", where):
                for cache in (host, staged):
                    cache.begin(n)
                for layer in range(info.num_layers):
                    k, v = (torch.randn(n, info.num_kv_heads, info.head_dim, generator=g).to(device) for _ in range(2))  # [n, Hkv, D]
                    host.write(layer, k, v)
                    staged.write(layer, k, v)
                host.commit(keep)
                staged.stage_commit(torch.tensor(staged_keep, device=device))
                staged.commit(keep)
            if (staged.committed, staged.pending) != (host.committed, host.pending):
                s.fail("stage_commit", f"committed/pending are {staged.committed}/{staged.pending}, a host commit's "
                                       f"{host.committed}/{host.pending}{where}")
            for layer in range(info.num_layers):
                for name, a, b in zip(("keys", "values"), host.read(layer), staged.read(layer)):
                    if not torch.equal(a, b):
                        s.fail("stage_commit", f"read({layer}) {name} differ from a host commit's{where}")

    run_property(a_staged_commit_reads_what_a_host_commit_does, examples, seed, shrink)
