"""Checks of the optional members (`core/interfaces.py`, "optional members"): a component that
has one keeps its contract, or the kit fails with one line naming the member.

* drafter `hidden_layers` (`ReadsHiddenStates`): distinct layer indices of the target;
* drafter `proposal_key(budget)` (`KeyedProposals`): hashable, the same for the same budget, and
  equal keys give equal proposals from the same state (checked in the lossless runs, `lossless.py`);
* drafter `keeps_rows_ahead` (`KeepsRowsAhead`): a bool; where true, the device-path runs hand its
  `observe` no rows after a drafted-ahead round (`lossless.py`'s proxy keeps the member);
* verifier `reset(state)` (`ResettableVerifier`): runs, and the pipeline calls it in every run;
* cache / attention `graph_safe` (`GraphSafe`): a bool;
* attention `launch_form(rows, prefix_len, chain, key_bytes)` (`LaunchForms`): an int, the same for the same
  arguments (a CUDA graph's key holds it); that no bit depends on it, the invariance runs check;
* cache `k`, `v`, `slot_table` (`RowKVCache`, required by `provides={"kv_rows"}`): the rows the
  kernels gather through `slot_table` hold what `read` returns, after writes and a commit;
* verifier `accept_on_device` (`AcceptsOnDevice`) and cache `stage_commit` (`CommitsOnDevice`): the
  device path equals the host path on random trees and rounds (`on_device.py`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.interfaces import (
    DecodeState,
    GraphSafe,
    KeepsRowsAhead,
    KeyedProposals,
    LaunchForms,
    KVCache,
    ReadsHiddenStates,
    ResettableVerifier,
    RowKVCache,
    TargetInfo,
)
from .kv_semantics import small_info
from .subject import Subject

BUDGETS = (1, 2, 7, 16, 64)


def check_drafter_members(s: Subject, drafter: Any, num_layers: int) -> None:
    if isinstance(drafter, ReadsHiddenStates):
        try:
            layers = tuple(drafter.hidden_layers)
        except TypeError:
            s.fail("hidden_layers", f"hidden_layers is {drafter.hidden_layers!r}, not a sequence of layer indices")
        if not all(type(l) is int and 0 <= l < num_layers for l in layers) or len(set(layers)) != len(layers):
            s.fail("hidden_layers", f"hidden_layers {list(layers)} must be distinct layers of the target, 0..{num_layers - 1}")
    if isinstance(drafter, KeepsRowsAhead) and not isinstance(drafter.keeps_rows_ahead, bool):
        s.fail("keeps_rows_ahead", f"keeps_rows_ahead is {drafter.keeps_rows_ahead!r}; declare True or False")
    if isinstance(drafter, KeyedProposals):
        for budget in BUDGETS:
            with s.calling("proposal_key", f" (budget {budget})"):
                key, again = drafter.proposal_key(budget), drafter.proposal_key(budget)
            try:
                hash(key)
            except TypeError:
                s.fail("proposal_key", f"proposal_key({budget}) returned an unhashable {type(key).__name__}")
            if key != again:
                s.fail("proposal_key", f"proposal_key({budget}) returned {key!r}, then {again!r}: a key must not change")


def check_verifier_members(s: Subject, verifier: Any) -> None:
    if isinstance(verifier, ResettableVerifier):
        with s.calling("reset"):
            out = verifier.reset(DecodeState(tokens=[1, 2, 3], prompt_len=2))
        if out is not None:
            s.fail("reset", f"reset(state) returned {type(out).__name__}; it returns None")


def check_graph_safe(s: Subject, component: Any) -> None:
    if isinstance(component, GraphSafe) and not isinstance(component.graph_safe, bool):
        s.fail("graph_safe", f"graph_safe is {component.graph_safe!r}; declare True or False")


def check_launch_forms(s: Subject, backend: Any) -> None:
    if not isinstance(backend, LaunchForms):
        return
    for rows, prefix_len, chain in ((1, 0, True), (3, 100, True), (48, 10, False), (99, 1000, False), (600, 20000, False)):
        with s.calling("launch_form", f" (rows {rows}, prefix_len {prefix_len}, chain {chain})"):
            form, again = backend.launch_form(rows, prefix_len, chain, 768), backend.launch_form(rows, prefix_len, chain, 768)
        if type(form) is not int or form != again:
            s.fail("launch_form", f"launch_form({rows}, {prefix_len}, {chain}, 768) returned {form!r}, then {again!r}: "
                                  "it must return the same int each time")


def check_kv_rows(s: Subject, new_cache: Callable[[TargetInfo, int], KVCache], device: str = "cpu") -> None:
    """For a cache that provides 'kv_rows': gather every layer's rows the way the kernels do
    (`kernels/row_inputs.py`) and compare them with `read`, after a commit that drops a token."""
    info = small_info(2, 2, 8, device)
    cache = new_cache(info, 64)
    if not isinstance(cache, RowKVCache):
        s.fail("kv_rows", f"provides 'kv_rows' but {type(cache).__name__} lacks k, v or slot_table (RowKVCache)")
    g = torch.Generator().manual_seed(0)
    for n, keep in ((5, [0, 2, 3]), (3, [0, 1, 2]), (4, None)):  # the last forward stays pending
        cache.begin(n)
        for layer in range(info.num_layers):
            k, v = (torch.randn(n, info.num_kv_heads, info.head_dim, generator=g).to(info.dtype).to(device) for _ in range(2))
            cache.write(layer, k, v)
        if keep is not None:
            cache.commit(keep)
    k, v, slots = cache.k, cache.v, cache.slot_table
    if not (isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and k.shape == v.shape and k.dim() >= 4 and k.is_contiguous()):
        s.fail("kv_rows", "k and v must be contiguous tensors of one shape [L, ..., Hkv, D]")
    live = cache.committed + cache.pending
    for layer in range(info.num_layers):
        rows = torch.arange(live, device=k.device) if slots is None else slots[:live].long()  # [T + n]
        want_k, want_v = cache.read(layer)
        got_k = k[layer].reshape(-1, *k.shape[-2:])[rows]
        got_v = v[layer].reshape(-1, *v.shape[-2:])[rows]
        if not (torch.equal(got_k, want_k) and torch.equal(got_v, want_v)):
            s.fail("kv_rows", f"layer {layer}: the rows slot_table points at differ from what read returns")
