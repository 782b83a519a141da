"""A batched step's trees grown on the device (`device_proposal.py`), for `BatchEngine`.

    host    per sequence: drafter.propose_on_device(state, budget) -> DeviceProposal
            (its marginals already on the device; its prompt-lookup trie on the host, or on the
            device too: `DeviceTrie`, stacked there as it is, `stacked`)
            one copy up: roots, prefix lengths, the host tries [S, L]       (`Grower.grow`)
    device  scorer.build_on_device -> DeviceTrees, the block [7, S * N] the verification reads
            one copy down of the block, queued behind it (the host reads it at the step's landing,
            after the step's one wait: `host_trees`)

The host never holds a tree before the step lands; it reads the block back with the accepted
paths and checks every tree there (`host_trees`): a scorer's malformed tree fails its own sequence
before anything is committed, naming the scorer.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import Blame
from .device_proposal import PAD_PARENT, DeviceProposal, DeviceProposals, DeviceTrees, DeviceTrie, FlatTrie, pack_tries, trie_faults
from .errors import JetSpecError, PluginError
from .on_device import Readback, pinned
from .tree import DraftTree


class Grower:
    """One half's tree read-back (the step's integers go up in one pinned copy made per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.readback = Readback(device)

    def grow(self, drafters: list, scorer: object, states: list, prefixes: list[int], budget: int,
             who: dict[str, str], vocab: int) -> tuple[DeviceTrees | None, dict[int, JetSpecError]]:
        """-> (the step's trees, or None where a proposal or the scorer declines: build on the host;
        {sequence: its drafter's error} — those sequences are not in the trees)."""
        props: list[DeviceProposal] = []
        failed: dict[int, JetSpecError] = {}
        kept: list[int] = []  # the sequences of props
        first: DeviceProposal | None = None  # what each proposal is checked against
        for s, (drafter, state) in enumerate(zip(drafters, states)):
            try:
                with Blame(who["drafter"], "in propose_on_device"):
                    p = drafter.propose_on_device(state, budget)
                if p is None:
                    return None, {}
                _check_proposal(p, first, self.device, who["drafter"])
                first = p if first is None or (first.trie is None and p.trie is not None) else first  # the step's first with a trie, else its first
                props.append(p)
                kept.append(s)
            except JetSpecError as e:
                failed[s] = e
        if not props:
            return None, failed
        if any(isinstance(p.trie, DeviceTrie) for p in props):  # the tries are on the device already
            s = len(props)
            host = np.array([states[k].tokens[-1] for k in kept] + [prefixes[k] for k in kept], dtype=np.int64)  # roots, prefixes
            up = pinned(torch.from_numpy(host), self.device).to(self.device, non_blocking=True)
            roots, lens = up[:s], up[s:]
            proposals = DeviceProposals(torch.stack([p.tokens for p in props]), torch.stack([p.logp for p in props]).float(),
                                        *stacked([p.trie for p in props], vocab))
        else:
            packed = _packed([p.trie for p in props], vocab)
            if isinstance(packed, dict):  # some tries are malformed: their sequences fail, the others go on
                for j, problem in packed.items():
                    failed[kept[j]] = PluginError(f"{who['drafter']} returned a DeviceProposal from propose_on_device whose trie is wrong: {problem}")
                props = [p for j, p in enumerate(props) if j not in packed]
                kept = [k for j, k in enumerate(kept) if j not in packed]
                if not props:
                    return None, failed
                packed = pack_tries([p.trie for p in props])  # the well-formed ones
            ints, logp, deepest = packed
            s, width = ints.shape[1], ints.shape[2]
            host = np.empty(2 * s + 4 * s * width, dtype=np.int64)  # roots, prefixes, tokens, parents, depths, logp (float64 bits)
            host[:s] = [states[k].tokens[-1] for k in kept]
            host[s : 2 * s] = [prefixes[k] for k in kept]
            host[2 * s : 2 * s + 3 * s * width] = ints.reshape(-1)
            host[2 * s + 3 * s * width :].view(np.float64)[:] = logp.reshape(-1)
            up = pinned(torch.from_numpy(host), self.device).to(self.device, non_blocking=True)
            roots, lens = up[:s], up[s : 2 * s]
            trie = up[2 * s : 2 * s + 3 * s * width].view(3, s, width)
            proposals = DeviceProposals(torch.stack([p.tokens for p in props]), torch.stack([p.logp for p in props]).float(),
                                        trie[0], trie[1], up[2 * s + 3 * s * width :].view(torch.float64).view(s, width).float(),
                                        trie[2], deepest)
        with Blame(who["scorer"], "in build_on_device"):
            trees = scorer.build_on_device(proposals, roots, lens, budget)
        if trees is None:
            return None, failed
        n = budget + 1
        if not (isinstance(trees, DeviceTrees) and trees.nodes == n and isinstance(trees.max_depth, int) and 1 <= trees.max_depth <= budget
                and isinstance(trees.block, torch.Tensor) and trees.block.shape == (7, s * n) and trees.block.dtype == torch.int64
                and trees.block.is_contiguous()
                and _on(trees.block, self.device)):
            raise PluginError(f"{who['scorer']} returned {_describe(trees)} from build_on_device; expected DeviceTrees of a "
                              f"contiguous [7, {s * n}] int64 block on {self.device}, {n} nodes a tree, max_depth in [1, {budget}]")
        self.readback.start(trees.block.view(-1))
        return trees, failed


def stacked(tries: list[DeviceTrie | None], vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A step's device tries (None: no trie) -> `DeviceProposals`' trie fields: tokens, parents [S, L],
    logp [S, L] float32, depths [S, L], the deepest bound. An entry whose parent is not an earlier
    entry or -1, whose token is outside [0, vocab) or whose depth is below 1 becomes padding (its
    subtree is then unreachable): the entries are not read on the host."""
    first = next(t for t in tries if t is not None)
    empty = None
    rows: list[list[torch.Tensor]] = [[], [], [], []]
    for t in tries:
        if t is None:
            empty = empty or (torch.zeros_like(first.tokens), torch.full_like(first.parents, PAD_PARENT),
                              torch.full_like(first.logp, float("-inf")), torch.zeros_like(first.depths))
        for row, x in zip(rows, empty if t is None else (t.tokens, t.parents, t.logp, t.depths)):
            row.append(x)
    tokens, parents, logp, depths = (torch.stack(r) for r in rows)  # [S, L] each
    index = torch.arange(tokens.shape[1], device=tokens.device)
    ok = (parents >= -1) & (parents < index) & (tokens >= 0) & (tokens < vocab) & (depths >= 1)  # [S, L]
    return (torch.where(ok, tokens, 0), torch.where(ok, parents, PAD_PARENT), torch.where(ok, logp.float(), float("-inf")),
            torch.where(ok, depths, 0), max(t.depth for t in tries if t is not None))


def host_trees(values: np.ndarray, nodes: int, roots: list[int], prefixes: list[int], vocab: int,
               who: str) -> list[DraftTree | JetSpecError]:
    """The step's tree block, read back [7, S * N], as host trees — each checked as a host-built tree
    is (`DraftTree`'s invariants, its root, tokens in the vocabulary) and against the rows the
    verification used (positions = prefix + depth, ends, index); a broken one is the scorer's error.
    Every check is one array operation over the whole step ([S, N]), the host's only pass over its trees:

        root         tokens[:, 0] = the sequence's root; parents[:, 0] = 0 (the device's convention); depth 0
        pre-order    0 <= parents[i] < i <= parents[i] + sizes[parents[i]] - 1     (inside its parent's interval)
        depths       depths[i] = depths[parents[i]] + 1;  positions = prefix + depths
        sizes        sizes[j] = 1 + the sum of its children's sizes;  sizes[:, 0] = N;  ends = index + sizes (root: 0)
        siblings     (parent, token) distinct within each tree"""
    s = len(roots)
    tok, par, dep, size, pos, ends, idx = values.reshape(7, s, nodes)  # [S, N] each
    index = np.arange(nodes)
    p = par[:, 1:]  # [S, N - 1]
    inside = (p >= 0) & (p < index[1:])
    p_safe = np.where(inside, p, 0)
    flat = (np.arange(s)[:, None] * nodes + p_safe).ravel()  # [S (N - 1)] each parent's place in the [S, N] block
    recount = 1 + np.bincount(flat, weights=size[:, 1:].ravel(), minlength=s * nodes).reshape(s, nodes)  # [S, N] exact: counts < 2^53
    keys = np.sort(p_safe * (vocab + 1) + tok[:, 1:], axis=1)  # [S, N - 1] exact where every token is in range (else `every` fails)
    below = (inside & (index[1:] < p_safe + size.ravel()[flat].reshape(s, -1)) & (dep[:, 1:] == dep.ravel()[flat].reshape(s, -1) + 1)
             & (ends[:, 1:] == index[1:] + size[:, 1:]))  # [S, N - 1] every non-root node against its parent
    every = (tok >= 0) & (tok < vocab) & (idx == index) & (pos == np.asarray(prefixes)[:, None] + dep) & (recount == size)  # [S, N]
    ok = ((tok[:, 0] == np.asarray(roots)) & (par[:, 0] == 0) & (dep[:, 0] == 0) & (size[:, 0] == nodes) & (ends[:, 0] == 0)
          & below.all(1) & every.all(1) & (keys[:, 1:] != keys[:, :-1]).all(1))
    four = values.reshape(7, s, nodes)[:4].copy()  # [4, S, N] tokens, parents, depths, sizes: the host trees' own
    four[1, :, 0] = -1  # the root's parent, as a host tree has it
    zeros = torch.zeros(nodes, dtype=torch.float32)  # scores: the device build keeps none (never read by a verifier)
    out: list[DraftTree | JetSpecError] = []
    for i, (tokens, parents, depths, sizes) in enumerate(zip(*(x.unbind(0) for x in torch.from_numpy(four).unbind(0)))):
        if not ok[i]:
            out.append(PluginError(f"{who} built an invalid tree on the device (tokens {_head(tok[i])}, parents {_head(four[1, i])}, "
                                   f"sizes {_head(size[i])}); a tree is in DFS pre-order with consistent depths, sizes and positions"))
            continue
        out.append(DraftTree(tokens=tokens, parents=parents, depths=depths, subtree_sizes=sizes, scores=zeros))
    return out


def _packed(tries: list[FlatTrie | None], vocab: int) -> tuple[np.ndarray, np.ndarray, int] | dict[int, str]:
    """`pack_tries`, checked in one pass (`trie_faults`) -> its arrays, or {index: what is wrong}
    for the malformed tries (`FlatTrie.problem`, asked only of those)."""
    try:
        ints, logp, deepest = pack_tries(tries)
    except (ValueError, TypeError, OverflowError):  # lists that do not convert: name the tries that do not
        problems = {j: t.problem(vocab) for j, t in enumerate(tries) if t is not None}
        return {j: p for j, p in problems.items() if p} or {j: "its lists do not convert to ints and floats" for j in problems}
    bad = trie_faults(ints, logp, [0 if t is None else t.size for t in tries], vocab)
    if not bad.any():
        return ints, logp, deepest
    return {int(j): tries[j].problem(vocab) or "it breaks a FlatTrie's rules" for j in np.flatnonzero(bad)}


def _check_proposal(p: object, first: DeviceProposal | None, device: torch.device, who: str) -> None:
    """A proposal's kind, its marginals' shapes, dtypes and device (its trie: `_packed`, for the step at once)."""
    if not isinstance(p, DeviceProposal):
        raise PluginError(f"{who} returned {type(p).__name__} from propose_on_device; expected a DeviceProposal or None")
    shape = tuple(p.tokens.shape)
    if not (p.tokens.dim() == 2 and p.tokens.dtype == torch.int64 and p.logp.shape == p.tokens.shape
            and p.logp.is_floating_point() and _on(p.tokens, device) and _on(p.logp, device) and shape[0] >= 1):
        raise PluginError(f"{who} returned marginals {shape} {p.tokens.dtype} / {tuple(p.logp.shape)} {p.logp.dtype} from "
                          f"propose_on_device; expected int64 tokens and float log-probs of one shape [D >= 1, K] on {device}")
    if p.trie is not None and not isinstance(p.trie, (FlatTrie, DeviceTrie)):
        raise PluginError(f"{who} returned a DeviceProposal from propose_on_device whose trie is wrong: "
                          f"its trie is a {type(p.trie).__name__}, not a FlatTrie or a DeviceTrie")
    if isinstance(p.trie, DeviceTrie):
        t, width = p.trie, p.trie.tokens.shape
        if not (t.tokens.dim() == 1 and all(x.shape == width and _on(x, device) for x in (t.parents, t.logp, t.depths))
                and t.tokens.dtype == t.parents.dtype == t.depths.dtype == torch.int64 and t.logp.is_floating_point()
                and _on(t.tokens, device) and isinstance(t.depth, int) and t.depth >= 0):
            raise PluginError(f"{who} returned a DeviceTrie from propose_on_device of shapes {tuple(t.tokens.shape)} / "
                              f"{tuple(t.parents.shape)} / {tuple(t.logp.shape)} / {tuple(t.depths.shape)}; expected int64 tokens, "
                              f"parents and depths and float log-probs of one shape [L] on {device}, and an int depth >= 0")
    if first is not None and (isinstance(p.trie, FlatTrie) and isinstance(first.trie, DeviceTrie)
                              or isinstance(p.trie, DeviceTrie) and isinstance(first.trie, FlatTrie)
                              or isinstance(p.trie, DeviceTrie) and isinstance(first.trie, DeviceTrie)
                              and p.trie.tokens.shape != first.trie.tokens.shape):
        raise PluginError(f"{who} returned tries of two kinds or widths from propose_on_device in one step; a step's "
                          "tries are all FlatTries or all DeviceTries of one width (None with either)")
    if first is not None and shape != tuple(first.tokens.shape):
        raise PluginError(f"{who} returned marginals of shape {shape} from propose_on_device; the step's first was "
                          f"{tuple(first.tokens.shape)} (one shape per step)")


def _on(x: torch.Tensor, device: torch.device) -> bool:
    """x is on `device` ("cuda" names the current GPU: cuda:0 is on it)."""
    return x.device.type == device.type and (device.index is None or x.device.index == device.index)


def _head(x: np.ndarray) -> str:
    return str(x.tolist()[:8])[:-1] + (", ...]" if x.size > 8 else "]")


def _describe(x: object) -> str:
    if isinstance(x, DeviceTrees) and isinstance(x.block, torch.Tensor):
        return f"DeviceTrees(block {tuple(x.block.shape)} {x.block.dtype} on {x.block.device}, nodes {x.nodes}, max_depth {x.max_depth})"
    return type(x).__name__
