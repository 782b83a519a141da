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

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..core.on_device import DeviceTree


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _walk_tree(tokens_ptr, parents_ptr, ends_ptr, choice_ptr, packed_ptr, n, d, BLOCK: tl.constexpr):
    """One tree's walk: its rows at the pointers (tree-local parents and ends), its packed result
    [2D + 3] at packed_ptr."""
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


@triton.jit(do_not_specialize=["n", "d"])  # size and depth change every round: one compile per BLOCK (>= 32)
def _walk(tokens_ptr, parents_ptr, ends_ptr, choice_ptr, packed_ptr, n, d, BLOCK: tl.constexpr):
    _walk_tree(tokens_ptr, parents_ptr, ends_ptr, choice_ptr, packed_ptr, n, d, BLOCK)


@triton.jit(do_not_specialize=["s_count"])
def _walk_many(tokens_ptr, parents_ptr, ends_ptr, choice_ptr, meta_ptr, packed_ptr, s_count, BLOCK: tl.constexpr):
    """Program s walks tree s of a packed step: meta [4, S] = its first row, N_s, D_s and the
    offset of its packed result."""
    s = tl.program_id(0)
    first = tl.load(meta_ptr + s)
    n = tl.load(meta_ptr + s_count + s)
    d = tl.load(meta_ptr + 2 * s_count + s)
    out = tl.load(meta_ptr + 3 * s_count + s)
    _walk_tree(tokens_ptr + first, parents_ptr + first, ends_ptr + first, choice_ptr + first, packed_ptr + out, n, d, BLOCK)


def walk(tree: DeviceTree, choice: torch.Tensor) -> torch.Tensor:
    """choice [>= N] int64 (rows past N are not read) -> packed [2D + 3] int64, on choice's device,
    no host sync: `greedy.walk_ops`'s result in one launch."""
    n, d = tree.size, tree.max_depth
    packed = torch.empty(2 * d + 3, dtype=torch.int64, device=choice.device)  # [2D + 3]
    _walk[(1,)](tree.tokens, tree.parents, tree.ends, choice.contiguous(), packed, n, d, BLOCK=max(32, triton.next_power_of_2(n)))
    return packed


def one_block(trees: Sequence[DeviceTree], cu_rows: Sequence[int]) -> bool:
    """Whether the trees lie end to end in one upload block, as `TreeUpload.many` puts a step's:
    tree s's columns start at cu_rows[s]."""
    block = trees[0].block
    return all(t.block is block and t.start == cu_rows[s] for s, t in enumerate(trees))


def walk_many(trees: Sequence[DeviceTree], choice: torch.Tensor, cu_rows: Sequence[int]) -> list[torch.Tensor]:
    """The trees of a packed step, end to end in one upload block (`one_block`), choice [R] int64 ->
    each tree's packed [2D_s + 3], as `walk` gives it alone, from ONE launch (a program per tree)
    and one small host-to-device copy of the trees' offsets, sizes and depths."""
    s = len(trees)
    sizes = [t.size for t in trees]
    depths = [t.max_depth for t in trees]
    lengths = [2 * d + 3 for d in depths]
    outs = [0] * s
    for i in range(1, s):
        outs[i] = outs[i - 1] + lengths[i - 1]
    meta = torch.tensor([list(cu_rows[:s]), sizes, depths, outs], dtype=torch.int64,
                        pin_memory=choice.is_cuda).to(choice.device, non_blocking=True)  # [4, S]
    packed = torch.empty(outs[-1] + lengths[-1], dtype=torch.int64, device=choice.device)  # [sum 2D_s + 3]
    block = trees[0].block  # [7, R]: rows 0, 1 and 5 are tokens, tree-local parents and ends
    _walk_many[(s,)](block[0], block[1], block[5], choice.contiguous(), meta, packed, s,
                     BLOCK=max(32, triton.next_power_of_2(max(sizes))))
    return list(packed.split(lengths))
