"""The exact (position-invariant) packed attention of a batched verification, kernel-level: one
launch or two, which row tiles, how fast, and whether every row keeps its bits (issues 18, 20).

    python -m bench.packed_attention --out bench/results/packed_attention.jsonl          # GPU only
    python -m bench.packed_attention --sequences 8 --nodes 17 --contexts 256 --block-m 16 64

A batched step of SmolLM2 (9 query heads, 3 KV heads, head dim 64, bf16, 256-key splits) verifies S
trees of N nodes each over contexts of T committed keys; the slot maps lie in a shared pool of pages
in random order and each tree's shape is random (a fixed seed). `packed_invariant_attention` runs it

* `two`: launch 1 the shared blocks in tiles of the rules' rows, launch 2 the per-token blocks and
  the folds in TAIL_ROWS tiles — what a tree of more than TAIL_ROWS packed rows takes today;
* `one`: a single launch, a program per (tile, KV head, split), the last split to arrive folding
  the rest — what decode steps and small trees take — at each `--block-m` row tile.

Every variant's output must equal the `two` form's bit for bit (the kernel's arithmetic per row
is the same; which launch computes it is not part of it); µs per call = CUDA-graph replays
(`do_bench_cudagraph`, median). Prints a line per variant; rows go to --out (kind "packed_attention").
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from jetspec.bench.rows import append_row, run_row

HQ, HKV, HEAD_DIM, SPLIT_BLOCKS = 9, 3, 64, 4  # SmolLM2-135M; split_keys_for(3) = 256 keys = 4 blocks of 64


def operands(s: int, n: int, t: int, spare: int, seed: int = 0, device: str = "cuda") -> dict:
    """S trees of n nodes over T committed keys each, slot maps of T + spare slots in one pool."""
    from jetspec.core.tree import DraftTree
    from jetspec.kernels.row_inputs import ancestor_table

    g = torch.Generator().manual_seed(seed)
    cap = t + spare  # each sequence's slot map (a run's cache capacity)
    dev = torch.device(device)
    pool = s * cap
    k_rows, v_rows = (torch.randn(pool, HKV, HEAD_DIM, generator=g).to(dev, torch.bfloat16) for _ in range(2))  # [P, Hkv, D]
    rows = torch.randperm(pool, generator=g).view(s, cap)  # [S, C] each sequence's pool rows, any order
    positions, first, prefix_rows = [], [], []
    for i in range(s):
        parents = [-1] + [int(torch.randint(0, j, (1,), generator=g)) for j in range(1, n)]
        positions.append(DraftTree.from_parents(list(range(n)), parents).position_ids(t))  # [n]
        first.append(torch.full((n,), i * n))
        prefix_rows.append(torch.full((n,), t))
    positions, first = torch.cat(positions).to(dev), torch.cat(first).to(dev)  # [R] each
    ancestors = ancestor_table(positions, torch.cat(prefix_rows).to(dev), first, n)  # [R, n]
    q = torch.randn(s * n, HQ, HEAD_DIM, generator=g).to(dev, torch.bfloat16)  # [R, Hq, D]
    return dict(q=q, k=k_rows, v=v_rows, slots=rows.reshape(-1).to(dev, torch.int32), positions=positions,
                ancestors=ancestors, prefix=torch.full((s,), t, dtype=torch.int32, device=dev),
                cu=[i * n for i in range(s + 1)], starts=[i * cap for i in range(s)], cap=cap)


def launcher(ops: dict, one_launch: bool, block_m: int):
    from jetspec.kernels.triton_invariant_attention import TAIL_ROWS, packed_invariant_attention
    from jetspec.kernels.triton_tree_attention import pack_tiles

    group = HQ // HKV
    dev = ops["q"].device
    tiles = pack_tiles(ops["cu"], ops["starts"], group, block_m).to(dev)  # [tiles, 5]
    tail = pack_tiles(ops["cu"], ops["starts"], group, TAIL_ROWS).to(dev)
    return lambda: packed_invariant_attention(
        ops["q"], ops["k"], ops["v"], ops["slots"], ops["positions"], ops["ancestors"], ops["prefix"], tiles, tail,
        ops["cap"], HEAD_DIM**-0.5, SPLIT_BLOCKS, False, block_m, one_launch=int(one_launch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", nargs="+", type=int, default=[1, 8, 32], help="S: trees per launch")
    ap.add_argument("--nodes", nargs="+", type=int, default=[9, 17, 33, 65], help="N: nodes per tree")
    ap.add_argument("--contexts", nargs="+", type=int, default=[256, 1024], help="T: committed keys per sequence")
    ap.add_argument("--spare", type=int, default=272, help="slots past T in each slot map (max_new + budget)")
    ap.add_argument("--block-m", nargs="+", type=int, default=[16, 32, 64, 128], help="the one-launch form's row tiles")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("packed_attention: needs a CUDA GPU (the launches' speed and bits are the GPU's)")
    from triton.testing import do_bench_cudagraph

    from jetspec.kernels.triton_invariant_attention import row_tiles

    stamp = run_row(shlex.join([sys.executable, *sys.argv]), {}) | {"kind": "packed_attention", "dtype": "bfloat16",
                                                                   "heads": [HQ, HKV, HEAD_DIM], "split_keys": 64 * SPLIT_BLOCKS}
    bad = 0
    for s in args.sequences:
        for n in args.nodes:
            for t in args.contexts:
                ops = operands(s, n, t, args.spare)
                rules_m = row_tiles(n * HQ // HKV)[0]
                ref = launcher(ops, False, rules_m)()
                torch.cuda.synchronize()
                variants = [("two", rules_m)] + [("one", m) for m in args.block_m]
                line = []
                for form, block_m in variants:
                    run = launcher(ops, form == "one", block_m)
                    bits = bool(torch.equal(run(), ref))
                    us = do_bench_cudagraph(run, rep=50, return_mode="median") * 1e3
                    bad += not bits
                    line.append(f"{form}/{block_m} {us:6.1f}{'' if bits else ' BITS DIFFER'}")
                    if args.out:
                        append_row(args.out, stamp | dict(sequences=s, nodes=n, context=t, spare=args.spare, form=form,
                                                          block_m=block_m, us=us, bits=bits))
                print(f"S {s:3d} N {n:3d} T {t:5d}:  " + "  ".join(line), flush=True)
    if bad:
        sys.exit(f"packed_attention: {bad} variant(s) changed a row's bits")


if __name__ == "__main__":
    main()
