"""The prompt lookup (`ngram.py`) on the device: S sequences' tries from their token histories in a
fixed number of array operations — no host work, no data-dependent shape, so a CUDA graph can hold
it — each trie equal entry for entry to `pack_tries([NgramDrafter.propose_flat(state, budget)])`
(its first `size` entries; the rest padding), so a tree grown from it is the host lookup's tree.

    history  [S, C] int64: sequence s's tokens at 0 .. length_s - 1 (the rest: anything)
    length   [S] int64
    match    for n = n_min .. n_max:
                 hit_n[s, e] = n <= e < length_s and history[s, e - n + i] = history[s, length_s - n + i] for i < n
             n_s = the largest n with a hit (0: none — an empty trie)
    ends     the M = max_matches largest e with hit_{n_s}[s, e], ascending; -1 past the m_s found      [S, M]
    rows     rows[s, j, d] = history[s, ends_sj + d] where ends_sj >= 0 and ends_sj + d < length_s, else -1   [S, M, D]

The trie merges the rows (D = min(max_depth, budget) tokens after each match), as `propose_flat`
builds it row by row:

    same[s, j, k, d] = AND_{e <= d} rows[s, j, e] = rows[s, k, e] >= 0      (prefixes equal through d)
    first[s, j, d]   = min{k : same[s, j, k, d]};  node (j, d) exists iff rows[s, j, d] >= 0 and first = j
    order            nodes numbered in (j, d) order (a cumulative sum of `exists`): parents come first
    parent           node (first[s, j, d - 1], d - 1), or -1 (the root) at d = 0
    count            c = #{k : same[s, j, k, d]};  whole w = the parent's count, m_s at the root
    logp             log(c / w), or with a calibration edge_logs[n_s][min(d + 1, T) - 1][f(c, w)]
                     (f = 2 if c = w, 1 if 2c >= w, else 0: `lookup_calibration.fraction_bucket`)

Output: tokens, parents, depths [S, L] int64 and logp [S, L] float32, L = M * D; padding: token 0,
parent PAD_PARENT, depth 0, log-prob -inf (`pack_tries`' padding).
"""

from __future__ import annotations

import math

import torch

from ..core.device_proposal import PAD_PARENT
from .lookup_calibration import BUCKETS, LookupCalibration
from .ngram import NgramOptions


def log_ratios(matches: int, device: torch.device | str) -> torch.Tensor:
    """[M + 1, M + 1] float32: [w, c] = math.log(c / w) for 1 <= c <= w <= M (the host lookup's values, rounded
    to float32 as `pack_tries` rounds them); 0 elsewhere."""
    table = [[math.log(c / w) if 1 <= c <= w else 0.0 for c in range(matches + 1)] for w in range(matches + 1)]
    return torch.tensor(table, dtype=torch.float64).to(device=device, dtype=torch.float32)


def edge_tables(calibration: LookupCalibration, n_max: int, device: torch.device | str) -> torch.Tensor:
    """[n_max, T, BUCKETS] float32: row n - 1 is `calibration.edge_logs(n)`."""
    rows = [calibration.edge_logs(n) for n in range(1, n_max + 1)]
    return torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=torch.float32)


def lookup_tries(history: torch.Tensor, length: torch.Tensor, options: NgramOptions, depth: int, ratios: torch.Tensor,
                 edges: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """history [S, C], length [S] int64 -> (tokens, parents, depths [S, M D] int64, logp [S, M D] float32), the
    tries of the module docstring. depth: D = min(max_depth, budget); ratios: `log_ratios(max_matches)`;
    edges: `edge_tables(...)`, or None to score by log(c / w)."""
    s, c = history.shape
    m, d, dev = options.max_matches, depth, history.device
    e = torch.arange(c, device=dev)  # [C] candidate ends
    n_s = torch.zeros(s, dtype=torch.int64, device=dev)  # [S]
    hits = torch.zeros(s, c, dtype=torch.bool, device=dev)  # [S, C] the ends of the longest n with any
    for n in range(options.n_min, options.n_max + 1):  # ascending: a longer n with a hit replaces a shorter
        hit = (e[None] >= n) & (e[None] < length[:, None]) & (length[:, None] >= n)  # [S, C]
        for i in range(n):
            want = history.gather(1, (length - n + i).clamp(0, c - 1)[:, None])  # [S, 1] the suffix's i-th token
            hit &= history[:, (e - n + i).clamp(min=0)] == want
        found = hit.any(1)  # [S]
        n_s = torch.where(found, n, n_s)
        hits = torch.where(found[:, None], hit, hits)
    top = torch.where(hits, e[None], -1).topk(min(m, c), dim=1).values  # [S, min(M, C)] the most recent ends, descending
    if m > c:
        top = torch.cat([top, top.new_full((s, m - c), -1)], 1)  # [S, M]
    ends = torch.where(top >= 0, top, c).sort(dim=1).values  # [S, M] ascending, the ones found first
    ends = torch.where(ends < c, ends, -1)
    found_m = (ends >= 0).sum(1)  # [S] m_s
    at = ends[:, :, None] + torch.arange(d, device=dev)  # [S, M, D]
    live = (ends >= 0)[:, :, None] & (at < length[:, None, None])  # [S, M, D]
    rows = torch.where(live, history.gather(1, at.clamp(0, c - 1).view(s, m * d)).view(s, m, d), -1)  # [S, M, D]
    # the merge: prefix classes, their first rows and counts
    eq = (rows[:, :, None] == rows[:, None]) & live[:, :, None]  # [S, M(j), M(k), D]
    same = eq.to(torch.int32).cummin(dim=3).values.bool()  # [S, M, M, D] equal through d
    k_index = torch.arange(m, device=dev)
    first = torch.where(same, k_index[None, None, :, None], m).amin(2)  # [S, M, D]
    exists = live & (first == k_index[None, :, None])  # [S, M, D]
    count = same.sum(2)  # [S, M, D] c
    whole = torch.cat([found_m[:, None, None].expand(s, m, 1), count[:, :, :-1]], 2)  # [S, M, D] w
    flat = exists.view(s, m * d)
    index = flat.cumsum(1) - 1  # [S, M D] a node's index in its trie
    depth0 = torch.arange(d, device=dev)  # [D] 0-based depth
    parent_row = torch.cat([torch.zeros_like(first[:, :, :1]), first[:, :, :-1]], 2)  # [S, M, D] the parent's row
    parent_at = (parent_row * d + depth0 - 1).clamp(0, m * d - 1).view(s, m * d)  # [S, M D] the parent's (j', d - 1); non-nodes clamped
    parent = torch.where(depth0 > 0, index.gather(1, parent_at).view(s, m, d), -1)  # [S, M, D]
    w, cnt = whole.clamp(0, m), count.clamp(0, m)
    logp = ratios.view(-1)[w * (m + 1) + cnt]  # [S, M, D] log(c / w)
    if edges is not None:
        bucket = torch.where(cnt == w, 2, torch.where(2 * cnt >= w, 1, 0))  # `fraction_bucket`
        row = torch.clamp(depth0 + 1, max=edges.shape[1]) - 1  # [D]
        n_row = (n_s - 1).clamp(min=0)[:, None, None]  # [S, 1, 1]
        logp = edges.view(-1)[(n_row * edges.shape[1] + row) * BUCKETS + bucket]
    width = m * d
    place = torch.where(flat, index, width)  # [S, M D]; a column past the end takes every non-node
    out = []
    for values, pad in ((rows, 0), (parent, PAD_PARENT), ((depth0 + 1).expand(s, m, d), 0)):
        out.append(torch.full((s, width + 1), pad, dtype=torch.int64, device=dev).scatter_(1, place, values.reshape(s, width))[:, :width])
    lp = torch.full((s, width + 1), float("-inf"), device=dev).scatter_(1, place, logp.reshape(s, width).float())[:, :width]
    return out[0], out[1], out[2], lp
