"""A pooled draft-ahead job's static inputs from the step's acceptance results, in ONE Triton launch
(`ContextPool.draft_ahead` on CUDA; elsewhere its torch ops run, the reference; Triton's interpreter
runs this for the tests). The torch form is ~25 small operators, each a host dispatch of the step.

Program s (one per pool slot), with peer i = peer_of[s] (-1: slot s is not in the step):

    start[s]  = starts[s];  anchor[s] = starts[s]                        every slot
    k         = min(max(flat[poff_i], 1), D_i + 1)                       accepted nodes, root included
    root[s]   = flat[poff_i + D_i + 1 + k]                               the bonus token: the next root
    anchor[s] = starts[s] + k
    hidden[s, j] = rows[min(max(flat[poff_i + 1 + min(j, D_i)], 0), N_i - 1) + hoff_i],   j < A

flat: the step's acceptance results end to end (peer i's [2 D_i + 3] from poff_i: k, path slots,
tokens); rows [sum N_i, k, H]: the trees' hidden rows end to end (peer i's from hoff_i). A path
entry is clamped into its own tree: a verifier's bad index fails its check later, not here. Only
copies: the same bits as the torch ops (`tests/test_pool_fill.py`).

    ints [2 S + 4 Q] int64: peer_of [S], starts [S], then per peer poff, D + 1, N - 1, hoff [Q] each (Q >= P,
                      the launch's `peers`: entries past P are never read, peer_of names peers below P)

On CUDA the launch is the first kernel of the pooled job's CUDA graph (`ContextPool._filled_job`), over
static copies of its inputs and Q = S: a step pays no Triton launch on the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 128  # hidden-row elements a program copies at a time (A rows of them)


@triton.jit(do_not_specialize=["slots", "peers"])  # the step's peer count changes as the batch drains
def _fill(ints_ptr, flat_ptr, rows_ptr, hidden_ptr, start_ptr, root_ptr, anchor_ptr, slots, peers, width,
          A: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    peer = tl.load(ints_ptr + s)
    begin = tl.load(ints_ptr + slots + s)
    tl.store(start_ptr + s, begin)
    if peer >= 0:
        base = 2 * slots + peer
        poff = tl.load(ints_ptr + base)
        d1 = tl.load(ints_ptr + base + peers)
        last = tl.load(ints_ptr + base + 2 * peers)
        hoff = tl.load(ints_ptr + base + 3 * peers)
        k = tl.minimum(tl.maximum(tl.load(flat_ptr + poff), 1), d1)
        tl.store(root_ptr + s, tl.load(flat_ptr + poff + d1 + k))
        tl.store(anchor_ptr + s, begin + k)
        j = tl.arange(0, A)  # [A]
        node = tl.load(flat_ptr + poff + 1 + tl.minimum(j, d1 - 1))  # [A] the path's slots, the last repeated
        row = (tl.minimum(tl.maximum(node, 0), last) + hoff).to(tl.int64)  # [A] rows of `rows`
        out = (s.to(tl.int64) * A + j) * width  # [A] first element of hidden[s, j]
        for c in range(0, width, BLOCK):
            cols = c + tl.arange(0, BLOCK)  # [BLOCK]
            live = (cols < width)[None, :]
            x = tl.load(rows_ptr + row[:, None] * width + cols[None, :], mask=live)  # [A, BLOCK]
            tl.store(hidden_ptr + out[:, None] + cols[None, :], x, mask=live)
    else:
        tl.store(anchor_ptr + s, begin)


def fill_ints(peer_of: np.ndarray, starts: np.ndarray, poff: np.ndarray, d1: np.ndarray, n: np.ndarray,
              stride: int | None = None) -> np.ndarray:
    """The launch's integers [2 S + 4 Q] (module docstring), from per-slot peer_of, starts [S] and
    per-peer result offsets, D + 1 and tree sizes N [P], each per-peer array padded with zeros to
    Q = `stride` >= P entries (default P): a launch inside a CUDA graph passes Q = S every step (its
    `peers` argument is recorded), a direct launch P."""
    q = len(poff) if stride is None else stride
    pad = lambda x: np.concatenate([x, np.zeros(q - len(x), dtype=np.int64)])  # noqa: E731
    return np.concatenate([peer_of, starts, pad(poff), pad(d1), pad(n - 1), pad(np.cumsum(n) - n)]).astype(np.int64)


def fill(ints: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor, hidden: torch.Tensor, start: torch.Tensor,
         root: torch.Tensor, anchor: torch.Tensor, peers: int) -> None:
    """Write the job's static inputs: hidden [S, A, k, H], start, root, anchor [S] (int64), from ints
    (`fill_ints` with stride `peers`, on the device), flat [>= sum 2 D_i + 3] int64 and rows
    [>= sum N_i, k, H] (rows and hidden contiguous, of one dtype)."""
    slots, a = start.shape[0], hidden.shape[1]
    width = math.prod(hidden.shape[2:])  # elements of one hidden row [k, H]
    _fill[(slots,)](ints, flat, rows, hidden, start, root, anchor, slots, peers, width, A=a, BLOCK=BLOCK)
