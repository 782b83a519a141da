"""The best-first tree of `best_first.py`, grown on the device for S sequences at once.

The host scorer pops a max-heap one node at a time; here the same set is found level by level:

    score(v) = sum of the edge log-probs on root -> v, every edge <= 0 (clamped), so
    score(child) <= score(parent) and the top-B nodes form a prefix-closed set, and
    a node at depth d among the top B is among the top B of depth d.

So a beam of width B per depth loses nothing the top-B set needs:

    frontier_0 = {root}
    for d = 0 .. levels - 1:
        candidates = every child of a frontier_d node         [S, W * K]  row d of the marginals
                   + every trie node of depth d + 1 whose     [S, L]      parent is in frontier_d
        (a marginal child whose token is also a trie child of the same node is that trie node:
         its edge is max(trie log-prob, row log-prob), `MergedProposal`'s rule)
        frontier_{d+1} = the best B candidates
    below the rows' D depths only trie paths go on: their nodes join at once, each scored by its
    depth-D ancestor's frontier entry plus its trie log-probs below it (`_trie_tail`)
    tree = the best B of all frontiers, ranked (score desc, depth asc): a parent always ranks
           before its child, so the chosen set is prefix-closed and in a parents-first order

then laid out in DFS pre-order (children in rank order) with the interval encoding
(`core/tree.py`):

    anc[i, j]   j is an ancestor-or-self of i             (self-or-parent squared log2(levels) times)
    size[j]   = sum_i anc[i, j]
    pre[i]    = sum over ancestors-or-self j != root of (1 + sum of the sizes of j's earlier siblings)

Every candidate is a real child of its parent's path, so any tree this makes is a valid one (a
lossless verification needs nothing more); the same set as `build` wherever scores do not tie.
Scores that are NaN or -inf rank last among real candidates (as -1e30); the host only asks for
budgets the proposals can fill (`fills`), so no tree holds a padding slot.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch

from ..core.cuda_graphs import GraphSet
from ..core.device_proposal import DeviceProposals, DeviceTrees

TENSORS = tuple(f.name for f in fields(DeviceProposals) if f.name != "trie_depth")  # a proposal's device tensors
SEQUENCE_BUCKET = 8  # the device build's graphs are captured for multiples of this many sequences (`GraphedGrowth`)
FLOOR = -1e20  # an edge's lowest log-prob: a NaN or -inf edge ranks its path below every finite one, above padding (-inf)


def fills(proposals: DeviceProposals, budget: int, max_depth: int | None = None) -> bool:
    """Whether every sequence's merged proposal has at least `budget` nodes within `levels`: the
    marginals alone give min(B, K^d) real candidates at depth d (a trie child that takes a row's
    token replaces its candidate, never removes one)."""
    _, d, k = proposals.tokens.shape
    levels = min(d, budget, max_depth or budget)
    room, width = 0, 1
    for _ in range(levels):
        width = min(budget, width * k)
        room += width
    return room >= budget


def levels_for(proposals: DeviceProposals, budget: int, max_depth: int | None = None) -> int:
    """How many depths the beam walks: the marginals' and the trie's, at most budget / max_depth. A
    trie deeper than the marginals is walked to a power of two of depths (few graph shapes): a level
    with no node adds none, and the tail's pointer doubling past its last hop adds zeros."""
    rows, deep = proposals.tokens.shape[1], proposals.trie_depth
    if deep > rows:
        deep = 1 << (deep - 1).bit_length()  # 9..16 -> 16
    return min(budget, max_depth or budget, max(rows, deep))


class GraphedGrowth:
    """`grow` on CUDA, replayed from a graph per shape (its ~15 small operators a depth launched at
    once): the step's proposals, roots and prefix lengths are copied into the shape's static inputs
    first. The trees it returns are the graph's static block, valid until the next replay of that
    shape — later in stream order than everything a step queues on them.

    A shape's S is the step's sequences rounded up to a multiple of SEQUENCE_BUCKET: a batch whose
    sequences drain one by one at its end replays a few graphs instead of capturing one per count
    (each capture costs tens of ms). Every operator of `grow` works on each sequence's row alone, so
    the rows past S (copies of the first sequence's inputs at capture, then whatever a step left
    there: always valid inputs) change no bit of the others; their trees are dropped."""

    def __init__(self) -> None:
        self.graphs = GraphSet()
        self._inputs: dict[tuple, tuple[DeviceProposals, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, p: DeviceProposals, roots: torch.Tensor, prefix_lens: torch.Tensor, budget: int,
                 max_depth: int | None = None) -> DeviceTrees:
        key = graph_key(p, budget, max_depth)
        s, rows = p.size, key[0]
        if key not in self._inputs:
            pad = lambda x: torch.cat([x, x[:1].expand(rows - s, *x.shape[1:])])  # noqa: E731  [rows, ...]
            tensors = {name: pad(getattr(p, name)) for name in TENSORS}
            self._inputs[key] = (DeviceProposals(**tensors, trie_depth=p.trie_depth), pad(roots), pad(prefix_lens))
        static, r, t = self._inputs[key]
        for name in TENSORS:
            getattr(static, name)[:s].copy_(getattr(p, name))
        r[:s].copy_(roots)
        t[:s].copy_(prefix_lens)
        trees = self.graphs.replay(key, lambda: grow(static, r, t, budget, max_depth))
        if rows == s:
            return trees
        n = trees.nodes
        return DeviceTrees(trees.block.view(7, rows, n)[:, :s].contiguous().view(7, s * n), n, trees.max_depth)  # [7, S * N], a copy


def graph_key(p: DeviceProposals, budget: int, max_depth: int | None = None) -> tuple:
    """The shape `GraphedGrowth` keeps a graph for: (sequences rounded up to SEQUENCE_BUCKET, D, K,
    the tries' width, budget, max_depth, levels)."""
    rows = -(-p.size // SEQUENCE_BUCKET) * SEQUENCE_BUCKET
    return (rows, *p.tokens.shape[1:], p.trie_tokens.shape[1], budget, max_depth, levels_for(p, budget, max_depth))


@torch.no_grad()
def grow(p: DeviceProposals, roots: torch.Tensor, prefix_lens: torch.Tensor, budget: int,
         max_depth: int | None = None) -> DeviceTrees:
    """S trees of budget + 1 nodes (the caller checked `fills`) -> `DeviceTrees`."""
    s, d_rows, k = p.tokens.shape
    dev, w = p.tokens.device, budget
    levels = levels_for(p, budget, max_depth)
    # node table, level by level; slot 0 is the root
    score = torch.zeros(s, 1, device=dev)  # [S, 1] the frontier's scores
    code = torch.full((s, 1), -1, dtype=torch.int64, device=dev)  # [S, F]: -1 root, t a trie node, -2 a row child
    real = torch.ones(s, 1, dtype=torch.bool, device=dev)  # [S, F]
    slot = torch.zeros(s, 1, dtype=torch.int64, device=dev)  # [S, F] the frontier's slots in the table
    t_score, t_real, t_tok, t_par = [score], [real], [roots[:, None]], [slot]
    # every edge in [FLOOR, 0] once, here (NaN and -inf -> FLOOR): sums of them need no cleaning a level
    used, lp_trie = 1, p.trie_logp.nan_to_num(nan=FLOOR, neginf=FLOOR).clamp(FLOOR, 0.0)  # [S, L]
    rows_lp = p.logp.nan_to_num(nan=FLOOR, neginf=FLOOR).clamp(FLOOR, 0.0)  # [S, D, K]
    same_all = p.tokens[:, :, :, None] == p.trie_tokens[:, None, None, :]  # [S, D, K, L] a row's token is trie node l's
    edge_all = torch.maximum(lp_trie[:, None], torch.where(same_all, rows_lp[..., None], float("-inf")).amax(2))  # [S, D, L]
    at_all = p.trie_depths[None] == torch.arange(1, d_rows + 1, device=dev)[:, None, None]  # [D, S, L] trie nodes of depth d + 1
    consts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    trie_code = torch.arange(p.trie_tokens.shape[1], device=dev)[None].expand_as(p.trie_tokens)  # [S, L]
    for d in range(min(levels, d_rows)):
        f = score.shape[1]
        parts_score, parts_real, parts_tok, parts_from, parts_code = [], [], [], [], []
        at, same, edge = at_all[d], same_all[:, d], edge_all[:, d]  # [S, L], [S, K, L], [S, L]: max(trie, row) log-prob
        # the rows' children of every frontier node
        row_tok, row_lp = p.tokens[:, d], rows_lp[:, d]  # [S, K]
        child = (p.trie_parents[:, None, :] == code[:, :, None]) & at[:, None, :]  # [S, F, L] trie children of each frontier node
        taken = (child[:, :, None, :] & same[:, None, :, :]).any(-1)  # [S, F, K] a trie node holds this token
        parts_score.append((score[:, :, None] + row_lp[:, None, :]).reshape(s, f * k))
        parts_real.append((real[:, :, None] & ~taken).reshape(s, f * k))
        parts_tok.append(row_tok[:, None, :].expand(s, f, k).reshape(s, f * k))
        if f not in consts:  # the frontier index and code of every row child: one pair per frontier width
            consts[f] = (torch.arange(f, device=dev).repeat_interleave(k)[None].expand(s, f * k),
                         torch.full((s, f * k), -2, dtype=torch.int64, device=dev))
        parts_from.append(consts[f][0])
        parts_code.append(consts[f][1])
        if p.trie_tokens.shape[1]:
            match = (p.trie_parents[:, :, None] == code[:, None, :]) & real[:, None, :]  # [S, L, F] the parent in the frontier
            parent = match.to(torch.int8).argmax(-1)  # [S, L]
            parts_score.append(score.gather(1, parent) + edge)
            parts_real.append(at & match.any(-1))
            parts_tok.append(p.trie_tokens)
            parts_from.append(parent)
            parts_code.append(trie_code)
        cand = torch.cat(parts_score, 1)  # [S, C]
        ok = torch.cat(parts_real, 1)
        keep = torch.where(ok, cand, float("-inf")).topk(min(w, cand.shape[1]), dim=1).indices  # [S, W]
        score, real = cand.gather(1, keep), ok.gather(1, keep)
        code = torch.cat(parts_code, 1).gather(1, keep)
        parent_slot = slot.gather(1, torch.cat(parts_from, 1).gather(1, keep))
        slot = used + torch.arange(keep.shape[1], device=dev)[None].expand_as(keep)
        used += keep.shape[1]
        t_score.append(score)
        t_real.append(real)
        t_tok.append(torch.cat(parts_tok, 1).gather(1, keep))
        t_par.append(parent_slot)
    if levels > d_rows:  # below the rows only the tries go on: every such node at once (`_trie_tail`)
        tail = _trie_tail(p, lp_trie, score, code, real, slot, used, d_rows, levels)
        for table, x in zip((t_score, t_real, t_tok, t_par), tail):
            table.append(x)
    return _lay_out(torch.cat(t_score, 1), torch.cat(t_real, 1), torch.cat(t_tok, 1), torch.cat(t_par, 1),
                    prefix_lens, budget, levels)


def _trie_tail(p: DeviceProposals, lp_trie: torch.Tensor, score: torch.Tensor, code: torch.Tensor, real: torch.Tensor,
               slot: torch.Tensor, used: int, d_rows: int, levels: int) -> tuple[torch.Tensor, ...]:
    """Trie nodes deeper than the rows (depth D < e <= levels), as one block of the node table (slots
    used .. used + L - 1, one per trie entry): below depth D a path's only children are its trie's,
    so the beam would keep them whole wherever it could; keeping all of them is exact (the final
    ranking takes the best B). A node is real where its depth-D ancestor is a real frontier node:

        score(t) = score(ancestor at D) + sum of the trie's log-probs on the path below it
        parent slot: the frontier slot of that ancestor (depth D + 1), else used + its trie parent"""
    n = p.trie_tokens.shape[1]
    depth, parents = p.trie_depths, p.trie_parents.clamp(min=0)  # [S, L]; padding: depth 0
    deeper = depth > d_rows  # [S, L] one hop up (and the edge passed) until depth D: pointer doubling after it
    up = torch.where(deeper, parents, torch.arange(n, device=lp_trie.device)[None])
    below = torch.where(deeper, lp_trie, 0.0)
    for _ in range(math.ceil(math.log2(levels - d_rows))):  # 2^j hops -> 2^(j+1)
        below = below + below.gather(1, up)
        up = up.gather(1, up)
    match = (up[:, :, None] == code[:, None, :]) & real[:, None, :]  # [S, L, F] the ancestor in the frontier
    at = match.to(torch.int8).argmax(-1)  # [S, L]
    ok = match.any(-1) & (depth > d_rows) & (depth <= levels)
    par = torch.where(depth == d_rows + 1, slot.gather(1, at), used + parents)
    return score.gather(1, at) + below, ok, p.trie_tokens, par


def _lay_out(score: torch.Tensor, real: torch.Tensor, tok: torch.Tensor, par: torch.Tensor,
             prefix_lens: torch.Tensor, budget: int, levels: int) -> DeviceTrees:
    """The node table [S, T] (slot 0 the root, then level by level) -> the best `budget` nodes and the
    root as DFS pre-order trees in `TreeUpload`'s block layout."""
    s, dev, n = score.shape[0], score.device, budget + 1
    key = torch.where(real, score, float("-inf"))[:, 1:]  # [S, T - 1]
    chosen = 1 + key.sort(dim=1, descending=True, stable=True).indices[:, :budget]  # [S, B] slots, best first (ties: shallower)
    order = torch.cat([torch.zeros(s, 1, dtype=torch.int64, device=dev), chosen], 1)  # [S, N] slot of node i (rank order)
    node_of = torch.zeros_like(score, dtype=torch.int64).scatter_(1, order, torch.arange(n, device=dev)[None].expand(s, n))
    parent = node_of.gather(1, par.gather(1, order))  # [S, N] rank-order parent (root: 0)
    idx = torch.arange(n, device=dev)
    reach = (idx[None, :, None] == idx[None, None, :]) | (parent[:, :, None] == idx[None, None, :])  # [S, N, N] self or parent
    reach = reach.float()
    for _ in range(math.ceil(math.log2(levels))) if levels > 1 else ():  # paths of <= 2^j hops -> 2^(j+1)
        reach = torch.bmm(reach, reach).clamp(max=1.0)
    anc = reach.long()  # [S, N, N] anc[i, j]: j is an ancestor-or-self of i (counts <= N: exact in float32)
    size = anc.sum(1)  # [S, N]
    sibling = (parent[:, :, None] == parent[:, None, :]) & (idx[None, None, :] < idx[None, :, None]) & (idx > 0)[None, None, :]
    weight = 1 + (sibling * size[:, None, :]).sum(-1)  # [S, N] 1 + the sizes of each node's earlier siblings
    weight[:, 0] = 0
    pre = (anc * weight[:, None, :]).sum(-1)  # [S, N] DFS pre-order index of node i
    depth = anc.sum(2) - 1  # [S, N] from the parent pointers themselves: positions always match the tree
    rows = torch.stack([tok.gather(1, order), pre.gather(1, parent), depth, size, prefix_lens[:, None] + depth,
                        pre + size, pre])  # [7, S, N] in rank order: tokens, parents, depths, sizes, positions, ends, index
    rows[5].masked_fill_(pre == 0, 0)  # the root's end is stored as 0 (`DeviceTree.ends`)
    block = torch.empty_like(rows).scatter_(2, pre[None].expand_as(rows), rows)  # [7, S, N] in pre-order
    return DeviceTrees(block.reshape(7, s * n), n, levels)
