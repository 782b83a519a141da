"""Proposals and trees that stay on the device: a batched step's drafts built into trees there.

A parallel head's draft is already on the device (per-depth top-k rows, queued a step ahead:
`DraftsAhead`); bringing it to the host, growing the tree there in Python and copying the tree
back costs a batched step more host time than the GPU spends verifying it. A drafter that can
hand its proposal over as device tensors (`ProposesOnDevice`) and a scorer that can grow trees
from them there (`BuildsOnDevice`) let the batched engine skip all three: the host uploads a few
integers (roots, prefix lengths, the prompt-lookup tries) and reads back the accepted paths.

`DeviceProposals`, S sequences' proposals of one kind — per-depth marginals merged with an
explicit trie, i.e. on the host `MergedProposal(DepthMarginals(tokens[s], logp[s]), trie_s)`:

    tokens, logp      [S, D, K]  int64 / float32: the children of ANY path of length d are row d
                                 (sorted by logp, descending; tokens distinct in a row)
    trie_tokens       [S, L]     int64: an explicit trie's nodes, parents before children
    trie_parents      [S, L]     int64: -1 for a child of the root, else the parent's index (< own);
                                 PAD_PARENT for padding
    trie_logp         [S, L]     float32: log q(node | its parent's path)
    trie_depths       [S, L]     int64: 1 .. ; 0 for padding
    trie_depth        int        (host) the deepest trie node over all S (0: no trie)

A path's children are the union of row d and the trie's children of that path; a token in both
keeps the larger log-prob (`MergedProposal`'s rule).

`DeviceTrees`: what `BuildsOnDevice.build_on_device` returns — the trees in `TreeUpload`'s block
layout ([7, S * N], sequence s in columns s * N .. s * N + N - 1, every tree N = budget + 1 nodes),
so the verification and acceptance read them as they read an uploaded step's.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .on_device import defined_below
from .proposal import TokenTrie

PAD_PARENT = -3  # a padding trie entry's parent: equal to no node's code (`scorers/best_first_device.py`)


@dataclass(frozen=True)
class DeviceProposals:
    tokens: torch.Tensor  # [S, D, K] int64
    logp: torch.Tensor  # [S, D, K] float32
    trie_tokens: torch.Tensor  # [S, L] int64
    trie_parents: torch.Tensor  # [S, L] int64
    trie_logp: torch.Tensor  # [S, L] float32
    trie_depths: torch.Tensor  # [S, L] int64
    trie_depth: int  # host: the deepest trie node (0: none)

    @property
    def size(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class DeviceTrees:
    block: torch.Tensor  # [7, S * N] int64 on the device: `on_device.TreeUpload`'s rows
    nodes: int  # N, every tree's size (budget + 1)
    max_depth: int  # host: an upper bound on every tree's depth (the acceptance's packed size)


@dataclass(frozen=True)
class FlatTrie:
    """An explicit trie as flat lists, parents before children (what `DeviceProposals` packs):
    node i is token tokens[i] below node parents[i] (-1: the root) at depth depths[i], its edge
    scored logps[i] = log q(token | its parent's path). Sibling tokens distinct."""

    tokens: list[int]
    parents: list[int]
    logps: list[float]
    depths: list[int]

    @staticmethod
    def of(trie: TokenTrie) -> FlatTrie:
        """A `TokenTrie`'s nodes, walked from the root."""
        return FlatTrie(*trie_rows(trie))

    @property
    def size(self) -> int:
        return len(self.tokens)

    def problem(self, vocab: int) -> str | None:
        """What makes it no trie of this vocabulary, or None: equal lengths, parents before children
        (-1 <= parents[i] < i), depth = parent's + 1, tokens in [0, vocab), log-probs <= 0 (no NaN),
        sibling tokens distinct."""
        n = self.size
        if not (len(self.parents) == len(self.logps) == len(self.depths) == n):
            return f"a FlatTrie's lists differ in length ({n}, {len(self.parents)}, {len(self.logps)}, {len(self.depths)})"
        if not n:
            return None
        try:
            tok, par, dep = (np.asarray(x, dtype=np.int64) for x in (self.tokens, self.parents, self.depths))
            lp = np.asarray(self.logps, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            return "a FlatTrie's lists hold something other than int tokens, parents, depths and float log-probs"
        index = np.arange(n)
        if not ((par >= -1) & (par < index)).all():
            return "a FlatTrie node's parent is not an earlier node (or -1, the root)"
        if not (dep == np.where(par < 0, 0, dep[np.maximum(par, 0)]) + 1).all():
            return "a FlatTrie node's depth is not its parent's + 1"
        if not ((tok >= 0) & (tok < vocab)).all():
            return f"a FlatTrie holds a token outside the vocabulary [0, {vocab})"
        if not (lp <= 0).all():
            return "a FlatTrie edge's log-prob is NaN or above 0"
        if len(set(zip(self.parents, self.tokens))) != n:
            return "a FlatTrie node has two children with one token"
        return None


@dataclass(frozen=True)
class DeviceTrie:
    """A trie already on the device, one sequence's row of `DeviceProposals`' trie layout (parents
    before children, padding: parent PAD_PARENT, depth 0); `depth` (host) bounds its depths. The
    engine cannot read its entries without waiting for the device, so it stacks a step's as they are
    and drops a malformed entry as padding there (a parent that is not an earlier entry or -1, a
    token outside the vocabulary): a drafter's bad trie can only make its own trees worse."""

    tokens: torch.Tensor  # [L] int64
    parents: torch.Tensor  # [L] int64
    logp: torch.Tensor  # [L] float32
    depths: torch.Tensor  # [L] int64
    depth: int  # host: >= every entry's depth


@dataclass(frozen=True)
class DeviceProposal:
    """One sequence's part of a `DeviceProposals` (what `ProposesOnDevice.propose_on_device`
    returns): its marginals on the device and its trie (prompt lookup) on the host, or on the
    device (`DeviceTrie`: every trie of a step then is one, or None)."""

    tokens: torch.Tensor  # [D, K] int64 on the device
    logp: torch.Tensor  # [D, K] float32 on the device
    trie: FlatTrie | DeviceTrie | None  # None: no trie


@runtime_checkable
class ProposesOnDevice(Protocol):
    """A drafter whose proposal can stay on the device (`DeviceProposal`), for a scorer that
    builds there (`BuildsOnDevice`). None: this round it cannot (the engine asks `propose`)."""

    def propose_on_device(self, state: object, budget: int) -> DeviceProposal | None:
        ...


@runtime_checkable
class BuildsOnDevice(Protocol):
    """A tree scorer that grows S trees on the device from `DeviceProposals`, each what its `build`
    would choose from the same proposal (ties aside), laid out as `DeviceTrees`."""

    def build_on_device(self, proposals: DeviceProposals, roots: torch.Tensor, prefix_lens: torch.Tensor,
                        budget: int) -> DeviceTrees | None:
        """roots, prefix_lens [S] int64 on the device -> S trees of budget + 1 nodes each; None: these
        proposals cannot fill them (the engine builds on the host)."""
        ...


def builds_on_device(scorer: object) -> bool:
    """The engine may call `build_on_device`: the scorer has it, defined no higher in its class tree
    than `build` (a subclass that overrides `build` alone keeps the host path)."""
    return isinstance(scorer, BuildsOnDevice) and defined_below(scorer, "build_on_device", "build")


def proposes_on_device(drafter: object) -> bool:
    """The engine may call `propose_on_device`: as `builds_on_device`, against `propose`."""
    return isinstance(drafter, ProposesOnDevice) and defined_below(drafter, "propose_on_device", "propose")


def trie_rows(trie: TokenTrie | None) -> tuple[list[int], list[int], list[float], list[int]]:
    """A trie's nodes, parents before children -> (tokens, parents (-1: the root), log-probs, depths)."""
    tokens: list[int] = []
    parents: list[int] = []
    logps: list[float] = []
    depths: list[int] = []
    if trie is None:
        return tokens, parents, logps, depths
    frontier: list[tuple[tuple[int, ...], int]] = [((), -1)]  # (path, its node index)
    while frontier:
        path, me = frontier.pop()
        for token, logp in trie.children(path):
            frontier.append((path + (token,), len(tokens)))
            tokens.append(int(token))
            parents.append(me)
            logps.append(float(logp))
            depths.append(len(path) + 1)
    return tokens, parents, logps, depths


def pack_tries(tries: Sequence[FlatTrie | None]) -> tuple[np.ndarray, np.ndarray, int]:
    """S tries -> (ints [3, S, L] int64: tokens, parents, depths; logp [S, L] float32; the deepest
    node). L: the largest trie's size rounded up to 0, 8, 16, 32, ... (few shapes for a scorer's
    CUDA graphs); padding: parent PAD_PARENT, depth 0, log-prob -inf. Every list goes to numpy in
    one conversion (the step's tries concatenated), not one per trie. Raises ValueError or
    TypeError where a trie's lists do not convert (`trie_faults` names the trie)."""
    sizes = [0 if t is None else t.size for t in tries]  # [S]
    largest = max(sizes, default=0)
    width = 0 if largest == 0 else 8
    while width < largest:
        width *= 2
    ints = np.zeros((3, len(tries), width), dtype=np.int64)
    ints[1] = PAD_PARENT
    logp = np.full((len(tries), width), -np.inf, dtype=np.float32)
    present = [t for t in tries if t is not None and t.size]
    if not present:
        return ints, logp, 0
    for t in present:
        if not (len(t.parents) == len(t.logps) == len(t.depths) == t.size):
            raise ValueError(f"a FlatTrie's lists differ in length ({t.size}, {len(t.parents)}, {len(t.logps)}, {len(t.depths)})")
    n, total = np.array(sizes, dtype=np.int64), sum(sizes)
    at = np.arange(total) + np.repeat(np.arange(len(tries)) * width - (np.cumsum(n) - n), n)  # [T] node -> row * L + col
    fields = (chain.from_iterable(t.tokens for t in present), chain.from_iterable(t.parents for t in present),
              chain.from_iterable(t.depths for t in present))
    flat = np.fromiter(chain(*fields), np.int64, 3 * total).reshape(3, total)  # [3, T] tokens, parents, depths
    ints.reshape(3, -1)[:, at] = flat
    logp.reshape(-1)[at] = np.fromiter(chain.from_iterable(t.logps for t in present), np.float64, total)
    return ints, logp, int(ints[2].max())


def trie_faults(ints: np.ndarray, logp: np.ndarray, sizes: Sequence[int], vocab: int) -> np.ndarray:
    """`pack_tries`' arrays -> [S] bool: sequence s's trie breaks `FlatTrie.problem`'s rules (one
    array pass over the step; `problem` then says what, for the few that do):

        -1 <= parents[i] < i;   depths[i] = (depths[parents[i]] or 0 at the root) + 1;
        0 <= tokens[i] < vocab;   logp[i] <= 0 (not NaN);   (parent, token) distinct"""
    tok, par, dep = ints  # [S, L] each
    index = np.arange(tok.shape[1])
    live = index < np.asarray(sizes, dtype=np.int64)[:, None]  # [S, L] real entries
    linked = (par >= -1) & (par < index)
    up = np.where(linked, par, 0)  # [S, L] a safe index of each entry's parent (the root's: 0, unread)
    ok = linked & (dep == np.where(par < 0, 0, np.take_along_axis(dep, up, axis=1)) + 1) & (tok >= 0) & (tok < vocab) & (logp <= 0)
    # (parent, token) as one key; padding and faults get unique negative keys (where ok, 0 <= token < vocab)
    keys = np.where(live & ok, (par + 1) * (vocab + 1) + tok, -1 - index)  # [S, L]
    keys.sort(axis=1)
    twins = (keys[:, 1:] == keys[:, :-1]).any(1)
    return (live & ~ok).any(1) | twins
