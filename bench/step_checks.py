"""Host time of a grown batched step's two host-side passes over its trees, on the CPU (issue 20):
the prompt lookup's tries packed and checked before the build (`batch_grow._packed`: `pack_tries`
+ `trie_faults`) and the device-built trees read back and checked (`batch_grow.host_trees`).

    python -m bench.step_checks [--sizes 8,16] [--nodes 17] [--calls 3000] [--repeats 3] [--label L] \
        [--out bench/results/step_checks.jsonl]

Inputs of the default drafter's sizes (budget 16: trees of 17 nodes), made once with a fixed seed:
per sequence a lookup trie of 5-29 nodes (one in five sequences has none), random parents, distinct
tokens of SmolLM2's vocabulary; a well-formed tree block [7, S * N] as the device build lays it out.
µs a call: the least of `--repeats` timings of `--calls` calls. Pure host work (numpy, tensor views):
on a GPU's host it costs about as much, so these rank the parts and show changes; run the same
command in a worktree of an older commit for a before/after.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from jetspec.bench.rows import append_row, run_row
from jetspec.core.batch_grow import _packed, host_trees
from jetspec.core.device_proposal import FlatTrie
from jetspec.core.on_device import TreeUpload
from jetspec.core.tree import DraftTree

VOCAB = 49152  # SmolLM2's


def random_tries(sequences: int, rng: random.Random) -> list[FlatTrie | None]:
    """A step's random lookup-sized tries: 5-29 nodes each, parents earlier, depths consistent, distinct tokens."""
    tries: list[FlatTrie | None] = []
    for _ in range(sequences):
        if rng.random() < 0.2:
            tries.append(None)
            continue
        n = rng.randrange(5, 30)
        parents = [-1] + [rng.randrange(-1, i) for i in range(1, n)]
        depths: list[int] = []
        for p in parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        tries.append(FlatTrie(rng.sample(range(VOCAB), n), parents, [-rng.random() for _ in range(n)], depths))
    return tries


def tree_block(sequences: int, nodes: int, rng: random.Random) -> tuple[np.ndarray, list[int], list[int]]:
    """A grown step's block read back, [7 * S * N] int64, as `TreeUpload.many` lays out host trees (the
    layout the device build writes), its roots and prefix lengths."""
    trees = [DraftTree.from_parents([rng.randrange(VOCAB) for _ in range(nodes)], [-1] + [rng.randrange(0, i) for i in range(1, nodes)])
             for _ in range(sequences)]
    prefixes = [100 + 7 * s for s in range(sequences)]
    _, block = TreeUpload("cpu", sequences * nodes).many(trees, prefixes)  # [7, S * N]
    return block.numpy().reshape(-1).copy(), [int(t.tokens[0]) for t in trees], prefixes


def least_us(fn, calls: int, repeats: int) -> float:
    """µs a call, the least of `repeats` timings of `calls` calls."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return 1e6 * best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,16", help="sequences a step (a half-step of 32 holds 16)")
    ap.add_argument("--nodes", type=int, default=17, help="nodes a tree: budget + 1")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="bench/results/step_checks.jsonl")
    args = ap.parse_args(argv)
    stamp = run_row("python -m bench.step_checks " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    stamp = {k: stamp[k] for k in ("date", "machine", "command", "torch")}
    for s in (int(x) for x in args.sizes.split(",")):
        rng = random.Random(s)
        tries = random_tries(s, rng)
        block, roots, prefixes = tree_block(s, args.nodes, rng)
        packed = least_us(lambda: _packed(tries, VOCAB), args.calls, args.repeats)
        trees = least_us(lambda: host_trees(block, args.nodes, roots, prefixes, VOCAB, "s"), args.calls, args.repeats)
        row = {"kind": "step_checks", "sequences": s, "nodes": args.nodes, "calls": args.calls, "repeats": args.repeats,
               "packed_us": packed, "host_trees_us": trees, "label": args.label, "dtype": "int64 + float32 (host numpy)"} | stamp
        append_row(Path(args.out), row)
        print(f"S {s:3d}: _packed {packed:7.1f} µs, host_trees {trees:7.1f} µs a call", flush=True)


if __name__ == "__main__":
    main()
