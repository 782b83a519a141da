"""The greedy walk (`greedy.walk_ops`) in one Triton launch: one program holds the whole tree, a
lane per node (N <= BLOCK; trees are at most a few hundred nodes), and writes the packed
[2D + 3] result of `core/on_device.py`. The pipeline runs it on CUDA tensors (`walk_on_device`);
on the CPU the torch ops run, and Triton's interpreter runs this for the tests.

Per node i, all lanes at once (pre-order: node j's subtree is [j, ends[j])):

    wrong[i]    = tokens[i] != choice[parents[i]]          the root's ends[0] = 0 rejects nothing
    reach[i]    = max { ends[j] : j <= i, wrong[j] }        a prefix max (associative scan), 0 if none
    accepted[i] = reach[i] <= i                             no wrong node is i or above it
    before[i]   = #{ j < i : accepted[j] }                  an exclusive prefix sum
    k           = #{ i : accepted[i] }
    slot[i]     = before[i]           if accepted[i]        the path: depth order is index order
                = k + i - before[i]   otherwise             then the other nodes, in index order
    packed[0] = k,  packed[1 + slot[i]] = i,  packed[D + 2 + slot[i]] = choice[i]   for slot[i] <= D

The slots are the stable descending sort of `accepted` that the torch walk takes, so both write
the same [2D + 3] integers, padding included (`tests/test_fused_walk.py` holds them equal).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.on_device import DeviceTree


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit(do_not_specialize=["n", "d"])  # size and depth change every round: one compile per BLOCK (>= 32)
def _walk(tokens_ptr, parents_ptr, ends_ptr, choice_ptr, packed_ptr, n, d, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)  # [BLOCK] node index; lanes i >= n are padding
    live = i < n
    tokens = tl.load(tokens_ptr + i, mask=live, other=0)
    parents = tl.load(parents_ptr + i, mask=live, other=0)  # the root's parent is stored as 0
    ends = tl.load(ends_ptr + i, mask=live, other=0)
    choice = tl.load(choice_ptr + i, mask=live, other=0)
    wanted = tl.load(choice_ptr + parents, mask=live, other=0)  # choice[parents[i]]
    wrong = live & (tokens != wanted)
    reach = tl.associative_scan(tl.where(wrong, ends, 0), 0, _max)
    accepted = (live & (reach <= i)).to(tl.int64)
    before = tl.cumsum(accepted, 0) - accepted
    k = tl.sum(accepted, 0)
    slot = tl.where(accepted != 0, before, k + i - before)
    keep = live & (slot <= d)
    tl.store(packed_ptr + 1 + slot, i.to(tl.int64), mask=keep)
    tl.store(packed_ptr + d + 2 + slot, choice, mask=keep)
    tl.store(packed_ptr, k)


def walk(tree: DeviceTree, choice: torch.Tensor) -> torch.Tensor:
    """choice [>= N] int64 (rows past N are not read) -> packed [2D + 3] int64, on choice's device,
    no host sync: `greedy.walk_ops`'s result in one launch."""
    n, d = tree.size, tree.max_depth
    packed = torch.empty(2 * d + 3, dtype=torch.int64, device=choice.device)  # [2D + 3]
    _walk[(1,)](tree.tokens, tree.parents, tree.ends, choice.contiguous(), packed, n, d, BLOCK=max(32, triton.next_power_of_2(n)))
    return packed
