"""`best_first_device.grow` as ONE Triton launch: a program per sequence runs the whole build.

The torch form launches ~15 small operators a depth plus the layout's, replayed from a CUDA graph:
hundreds of tiny kernels a step, GPU time the step then waits for (bench/RESULTS.md). Here each
program keeps its sequence's beam in registers and its node table in a scratch row, and writes the
tree block directly. Same algorithm, same arithmetic (`best_first_device.py`'s docstring has the
math), step for step:

    edges      every log-prob in [FLOOR, 0] (NaN, -inf -> FLOOR)
    level d    candidates in the torch form's order: the frontier's row children f * K + k
               (f < W_d; a child whose token a trie child of the same node holds is not real),
               then the trie nodes W_d * K + l (real where depth d + 1 and the parent is in the
               frontier; edge = max(trie log-prob, the row's log-prob of the same token));
               the best min(B, W_d * K + L) by (score desc, candidate index asc) go on
    tail       trie nodes below the rows' D depths, their ancestor at D found by pointer doubling
               (the torch form's order of sums, so the same float scores)
    layout     the best B table entries by (score desc, slot asc) after the root; ancestors by
               walking parents; size, depth, DFS pre-order as in `_lay_out`

A ranking is one `tl.sort` of int64 keys: the score's float bits made order-preserving in the high
32 bits (-0.0 made +0.0 first), the tie-break index reversed in the low 32. Gathers by a computed
index go through the scratch row (a store, a barrier, a load). The depths, the levels and the tail's
doublings are runtime loops, so one compiled kernel serves a (D, K, trie width bucket, budget).

Measured end to end it is slower than the graphed torch form (bench/RESULTS.md), which that run did
not split into the kernel's time and its compiles (one per trie width bucket); a likely cause is that
a program walks its sequence's levels, sorts and table serially, one program per sequence.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..core.device_proposal import DeviceProposals, DeviceTrees
from .best_first_device import FLOOR, levels_for


@triton.jit
def _key(score, tie, SPAN: tl.constexpr):
    """score (float32, no NaN) and a tie index in [0, SPAN) -> int64 keys: larger score first,
    then lower tie index first."""
    bits = (score + 0.0).to(tl.int32, bitcast=True)  # + 0.0: -0.0 ranks as +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 that orders as the floats do
    return (ordered.to(tl.int64) << 32) | (SPAN - 1 - tie).to(tl.int64)


@triton.jit
def _lowest(SPAN: tl.constexpr):
    """[SPAN] int64 keys below every `_key` (padding: ranked last)."""
    return tl.full([SPAN], -2147483648, tl.int32).to(tl.int64) << 32


@triton.jit
def _in_frontier(codes, f_code, f_real, f_score, fi):
    """Trie entries' codes [LP] against the frontier [BP] -> (whether a real frontier entry has the
    code, that entry's index, its score); at most one entry matches a code."""
    match = (codes[:, None] == f_code[None, :]) & f_real[None, :]  # [LP, BP]
    inside = tl.max(match.to(tl.int32), axis=1) > 0
    return inside, tl.sum(tl.where(match, fi[None, :], 0), axis=1), tl.sum(tl.where(match, f_score[None, :], 0.0), axis=1)


@triton.jit
def _clean(x, FLOOR_: tl.constexpr):
    """An edge's log-prob in [FLOOR, 0]; NaN and -inf -> FLOOR."""
    x = tl.where(x != x, FLOOR_, x)
    return tl.minimum(tl.maximum(x, FLOOR_), 0.0)


@triton.jit
def _grow_kernel(tok_ptr, lp_ptr, ttok_ptr, tpar_ptr, tlp_ptr, tdep_ptr, root_ptr, plen_ptr, fscr_ptr, iscr_ptr, out_ptr,
                 total_cols, levels, rows, hops, FLOOR_: tl.constexpr, D: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                 L: tl.constexpr, LP: tl.constexpr, B: tl.constexpr, BP: tl.constexpr, CP: tl.constexpr, TP: tl.constexpr,
                 NP: tl.constexpr, SCR_F: tl.constexpr, SCR_I: tl.constexpr):
    s = tl.program_id(0)
    N: tl.constexpr = B + 1
    # scratch row: f32 [candidate score CP | table score TP | tail sums LP]; int64 [sorted keys CP | candidate
    # real, token, from, code CP each | table real, token, parent TP each | sorted table keys TP | node of slot TP |
    # parent rank NP | pre-order NP | tail hops LP]
    fs = fscr_ptr + s * SCR_F
    f_cand, f_tab, f_below = fs, fs + CP, fs + CP + TP
    ins = iscr_ptr + s * SCR_I
    i_sorted, i_real, i_tok, i_from, i_code = ins, ins + CP, ins + 2 * CP, ins + 3 * CP, ins + 4 * CP
    t_real, t_tok, t_par = ins + 5 * CP, ins + 5 * CP + TP, ins + 5 * CP + 2 * TP
    t_sorted, t_node = ins + 5 * CP + 3 * TP, ins + 5 * CP + 4 * TP
    i_prank, i_pre, i_up = ins + 5 * CP + 5 * TP, ins + 5 * CP + 5 * TP + NP, ins + 5 * CP + 5 * TP + 2 * NP

    fi = tl.arange(0, BP)  # frontier entries
    ks = tl.arange(0, KP)
    kmask = ks < K
    ls = tl.arange(0, LP)
    lmask = ls < L
    ttok = tl.load(ttok_ptr + s * L + ls, mask=lmask, other=0)
    tpar = tl.load(tpar_ptr + s * L + ls, mask=lmask, other=-3)
    tdep = tl.load(tdep_ptr + s * L + ls, mask=lmask, other=0)
    tlp = _clean(tl.load(tlp_ptr + s * L + ls, mask=lmask, other=float("-inf")), FLOOR_)  # [LP]
    neg = tl.full([CP], float("-inf"), tl.float32)

    # the root: slot 0
    root = tl.load(root_ptr + s)
    tl.store(f_tab + 0, 0.0)
    tl.store(t_real + 0, 1)
    tl.store(t_tok + 0, root)
    tl.store(t_par + 0, 0)
    f_score = tl.zeros([BP], tl.float32)
    f_code = tl.where(fi == 0, -1, -4).to(tl.int64)  # -1: the root; -4: no entry (matches no trie parent)
    f_real = fi == 0
    zero = tl.program_id(0) * 0  # an int32 scalar: the loop's running counts are runtime values
    width = zero + 1  # W_d: frontier entries
    base = zero  # the frontier's first slot
    used = zero + 1  # table slots taken
    cs = tl.arange(0, CP)
    for d in range(rows):  # a runtime loop: one compiled body for every depth (and every `levels`)
        rtok = tl.load(tok_ptr + (s * D + d) * K + ks, mask=kmask, other=-1)  # [KP]
        rlp = _clean(tl.load(lp_ptr + (s * D + d) * K + ks, mask=kmask, other=float("-inf")), FLOOR_)  # [KP]
        # row children of every frontier entry, candidate f * K + k
        live = fi < width
        taken = tl.zeros([BP, KP], tl.int1)
        if L > 0:
            hit = ((tpar[None, None, :] == f_code[:, None, None]) & (tdep[None, None, :] == d + 1)
                   & (ttok[None, None, :] == rtok[None, :, None]))  # [BP, KP, LP]
            taken = tl.max(hit.to(tl.int32), axis=2) > 0
        r_live = live[:, None] & kmask[None, :]  # [BP, KP]
        rc = fi[:, None] * K + ks[None, :]  # candidate index f * K + k
        tl.store(f_cand + rc, f_score[:, None] + rlp[None, :], mask=r_live)
        tl.store(i_real + rc, (f_real[:, None] & ~taken).to(tl.int64), mask=r_live)
        tl.store(i_tok + rc, tl.zeros([BP, KP], tl.int64) + rtok[None, :], mask=r_live)
        tl.store(i_from + rc, tl.zeros([BP, KP], tl.int64) + fi[:, None].to(tl.int64), mask=r_live)
        tl.store(i_code + rc, tl.full([BP, KP], -2, tl.int64), mask=r_live)
        if L > 0:  # trie nodes of depth d + 1 whose parent is in the frontier, candidate W_d * K + l
            inside, parent, p_score = _in_frontier(tpar, f_code, f_real, f_score, fi)  # [LP] each: the parent's entry
            same = (rtok[None, :] == ttok[:, None]) & kmask[None, :]  # [LP, KP]
            edge = tl.maximum(tlp, tl.max(tl.where(same, rlp[None, :], float("-inf")), axis=1))
            at = width * K + ls
            tl.store(f_cand + at, p_score + edge, mask=lmask)
            tl.store(i_real + at, ((tdep == d + 1) & inside).to(tl.int64), mask=lmask)
            tl.store(i_tok + at, ttok, mask=lmask)
            tl.store(i_from + at, parent.to(tl.int64), mask=lmask)
            tl.store(i_code + at, ls.to(tl.int64), mask=lmask)
        count = width * K + L  # candidates C_d
        tl.debug_barrier()
        valid = cs < count
        c_score = tl.load(f_cand + cs, mask=valid, other=0.0)
        c_real = tl.load(i_real + cs, mask=valid, other=0) != 0
        keys = tl.where(valid, _key(tl.where(c_real, c_score, neg), cs, CP), _lowest(CP))
        tl.store(i_sorted + cs, tl.sort(keys, descending=True))
        tl.debug_barrier()
        new_width = tl.minimum(count, B)
        keep = fi < new_width
        c = (CP - 1 - (tl.load(i_sorted + fi) & 0xFFFFFFFF)).to(tl.int32)  # [BP] the chosen candidates, best first
        c = tl.where(keep, c, 0)
        f_score = tl.load(f_cand + c)
        f_real = (tl.load(i_real + c) != 0) & keep
        f_code = tl.where(keep, tl.load(i_code + c), -4)
        parent_slot = base + tl.load(i_from + c)
        slot = used + fi
        tl.store(f_tab + slot, f_score, mask=keep)
        tl.store(t_real + slot, f_real.to(tl.int64), mask=keep)
        tl.store(t_tok + slot, tl.load(i_tok + c), mask=keep)
        tl.store(t_par + slot, parent_slot, mask=keep)
        base = used
        used = used + new_width
        width = new_width
        tl.debug_barrier()
    if L > 0:  # trie nodes below the rows (levels > D): each joins at once, below its depth-D ancestor (`_trie_tail`)
        tail = (ls * 0 + levels) > D  # [LP]: levels > D, as a vector (a scalar mask trips Triton's interpreter)
        deeper = tdep > D
        up = tl.where(deeper, tl.maximum(tpar, 0), ls.to(tl.int64))
        below = tl.where(deeper, tlp, 0.0)
        for _ in range(hops):  # 2^j hops -> 2^(j+1), the torch form's order of sums
            tl.store(f_below + ls, below)
            tl.store(i_up + ls, up)
            tl.debug_barrier()
            below = below + tl.load(f_below + up)
            up = tl.load(i_up + up)
            tl.debug_barrier()
        inside, anc, a_score = _in_frontier(up, f_code, f_real, f_score, fi)  # [LP] each: the depth-D ancestor's entry
        ok = inside & (tdep > D) & (tdep <= levels)
        par = tl.where(tdep == D + 1, base + anc, used + tl.maximum(tpar, 0))
        slot = used + ls
        tl.store(f_tab + slot, a_score + below, mask=lmask & tail)
        tl.store(t_real + slot, ok.to(tl.int64), mask=lmask & tail)
        tl.store(t_tok + slot, ttok, mask=lmask & tail)
        tl.store(t_par + slot, par, mask=lmask & tail)
        used = used + ((zero + levels) > D).to(tl.int32) * L
    tl.debug_barrier()

    # the best B entries after the root, by (score desc, slot asc); the root first
    ts = tl.arange(0, TP)
    inside = ts < used
    t_score = tl.load(f_tab + ts, mask=inside, other=0.0)
    t_ok = tl.load(t_real + ts, mask=inside, other=0) != 0
    keys = _key(tl.where(t_ok, t_score, float("-inf")), ts, TP)
    top = (tl.full([TP], 2147483647, tl.int32).to(tl.int64) << 32) | (TP - 1)  # above every real key: the root, slot 0
    keys = tl.where(ts == 0, top, tl.where(inside, keys, _lowest(TP)))
    tl.store(t_sorted + ts, tl.sort(keys, descending=True))
    tl.debug_barrier()
    ns = tl.arange(0, NP)
    node = ns < N
    order = tl.where(node, (TP - 1 - (tl.load(t_sorted + ns) & 0xFFFFFFFF)), 0)  # [NP] slot of rank i
    tl.store(t_node + order, ns.to(tl.int64), mask=node)
    tl.debug_barrier()
    prank = tl.where(node, tl.load(t_node + tl.load(t_par + order)), 0)  # [NP] rank-order parent (root: 0)
    tl.store(i_prank + ns, prank)
    tl.debug_barrier()
    both = node[:, None] & node[None, :]
    anc = (ns[:, None] == ns[None, :]) | (prank[:, None] == ns[None, :])  # [NP, NP] self or parent
    cur = prank
    for _ in range(levels - 1):  # every ancestor, one hop at a time
        cur = tl.load(i_prank + cur)
        anc = anc | (cur[:, None] == ns[None, :])
    anc = (anc & both).to(tl.int64)  # anc[i, j]: j is an ancestor-or-self of i
    size = tl.sum(anc, axis=0)  # [NP]
    depth = tl.sum(anc, axis=1) - 1
    sibling = (prank[:, None] == prank[None, :]) & (ns[None, :] < ns[:, None]) & (ns[None, :] > 0) & both
    weight = 1 + tl.sum(tl.where(sibling, size[None, :], 0), axis=1)
    weight = tl.where(ns == 0, 0, weight)
    pre = tl.sum(anc * weight[None, :], axis=1)  # [NP] DFS pre-order index of node i
    tl.store(i_pre + ns, pre)
    tl.debug_barrier()
    ppre = tl.load(i_pre + prank)
    col = s * N + pre
    plen = tl.load(plen_ptr + s)
    tl.store(out_ptr + 0 * total_cols + col, tl.load(t_tok + order), mask=node)
    tl.store(out_ptr + 1 * total_cols + col, ppre, mask=node)
    tl.store(out_ptr + 2 * total_cols + col, depth, mask=node)
    tl.store(out_ptr + 3 * total_cols + col, size, mask=node)
    tl.store(out_ptr + 4 * total_cols + col, plen + depth, mask=node)
    tl.store(out_ptr + 5 * total_cols + col, tl.where(pre == 0, 0, pre + size), mask=node)
    tl.store(out_ptr + 6 * total_cols + col, pre, mask=node)


def constants(d: int, k: int, width: int, budget: int) -> dict[str, int | float]:
    """The kernel's compile-time constants for rows [D, K], tries of `width` entries and a budget:
    padded sizes, the candidate and table spans, the scratch row lengths. The levels walked are a
    runtime argument: one compiled kernel a trie width bucket."""
    lp, bp, kp = max(triton.next_power_of_2(width), 1), triton.next_power_of_2(budget), triton.next_power_of_2(k)
    cp = triton.next_power_of_2(bp * k + lp)  # candidates of a level: B * K row children + L trie nodes
    tp = triton.next_power_of_2(1 + d * budget + width)  # the node table: root, B a level, the tail
    np_ = triton.next_power_of_2(budget + 1)
    return dict(FLOOR_=FLOOR, D=d, K=k, KP=kp, L=width, LP=lp, B=budget, BP=bp, CP=cp, TP=tp, NP=np_,
                SCR_F=cp + tp + lp, SCR_I=5 * cp + 5 * tp + 2 * np_ + lp)


def grow_kernel(p: DeviceProposals, roots: torch.Tensor, prefix_lens: torch.Tensor, budget: int,
                max_depth: int | None = None) -> DeviceTrees:
    """`best_first_device.grow` in one launch -> the same `DeviceTrees` (the caller checked `fills`)."""
    s, d, k = p.tokens.shape
    levels = levels_for(p, budget, max_depth)
    c = constants(d, k, p.trie_tokens.shape[1], budget)
    hops = math.ceil(math.log2(levels - d)) if levels > d else 0  # the tail's pointer doubling, as `_trie_tail`
    dev, n = p.tokens.device, budget + 1
    fscr = torch.empty(s, c["SCR_F"], dtype=torch.float32, device=dev)  # [S, SCR_F] each program's scratch row
    iscr = torch.empty(s, c["SCR_I"], dtype=torch.int64, device=dev)  # [S, SCR_I]
    out = torch.empty(7, s * n, dtype=torch.int64, device=dev)  # [7, S * N] the trees' block
    _grow_kernel[(s,)](p.tokens.contiguous(), p.logp.float().contiguous(), p.trie_tokens.contiguous(), p.trie_parents.contiguous(),
                       p.trie_logp.float().contiguous(), p.trie_depths.contiguous(), roots.contiguous(), prefix_lens.contiguous(),
                       fscr, iscr, out, s * n, levels, min(levels, d), hops, **c)
    return DeviceTrees(out, n, levels)
