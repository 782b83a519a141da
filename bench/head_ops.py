"""Torch operators dispatched by one round of the causal draft head, counted on the CPU (issue 18/17).

    python bench/head_ops.py [--dtype bfloat16] [--context 300] [--together S] [--label after] [--out bench/results/head_ops.jsonl]

On the H200 the one-forward draft is ~100 tiny kernels (~5 us each, ~0.6 ms a round even replayed
from a CUDA graph): its cost is their number, which a CPU can count. This builds a random causal
head of SmolLM2-135M's shape (hidden 576, 9 query / 3 KV heads of 64, 2 layers, block 8,
intermediate 1536) on a stub target that lends an embedding and a tied LM head of 49152 tokens,
then counts under a `TorchDispatchMode` the aten operators of
* draft: `HeadDrafter.draft_block` over the context cache's whole buffers (what the CUDA graph and
  the draft queued ahead run), the top-k of depths 1..7;
* append: `ContextDrafter.write_context` of APPEND_ROWS rows (what the append's graph runs);
* with --together S: a batched step's drafting ahead for S sequences, each drafter's `draft_ahead`
  against one `draft_ahead_together` (the pool's one append and one draft).
"compute" = operators that are not views (on a GPU, each launches about one kernel; SDPA launches
one or two, and a CPU run picks the CPU's SDPA operator, not the efficient-attention one; torch's
rms_norm is five operators here and one fused kernel on CUDA); "views" = view and aliasing
operators (host work only). Counts do not depend on the sizes, only on the code.
Run it from any checkout: PYTHONPATH=<checkout> python <this file> counts that checkout's head.
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jetspec.bench.rows import append_row, run_row
from jetspec.core.interfaces import TargetInfo
from jetspec.drafters.head import HeadOptions, jetspec_drafter
from jetspec.drafters.head.graphs import APPEND_ROWS

VOCAB = 49152
# operators that alias their input without the view flag on their schema: no kernel either
ALIASING = {"_unsafe_view", "split", "split_with_sizes", "unbind", "chunk", "alias", "detach"}


class Ops(TorchDispatchMode):
    """aten operator -> times dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.count: collections.Counter = collections.Counter()
        self.views: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).removeprefix("aten.")
        self.count[name] += 1
        if func.is_view or name in ALIASING:
            self.views.add(name)
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        views = sum(n for op, n in self.count.items() if op in self.views)
        total = sum(self.count.values())
        return {"total": total, "compute": total - views, "views": views, "per_op": dict(sorted(self.count.items()))}


class StubTarget:
    """SmolLM2-135M's identity, its embedding and tied LM head (random): all a head drafter uses."""

    def __init__(self, dtype: torch.dtype):
        self.info = TargetInfo(
            name="SmolLM2-135M-shape", architecture="llama", vocab_size=VOCAB, hidden_size=576, num_layers=30,
            num_kv_heads=3, head_dim=64, max_positions=8192, dtype=dtype, device=torch.device("cpu"),
            eos_token_ids=(2,), fingerprint="",
        )  # fmt: skip
        self.weight = torch.randn(VOCAB, 576, dtype=dtype) * 0.05  # [V, H]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(tokens, self.weight)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight)


def count(dtype: torch.dtype, context: int) -> dict[str, dict]:
    torch.manual_seed(0)
    target = StubTarget(dtype)
    options = HeadOptions(checkpoint="random", layers=2, block_size=8, top_k=8, cuda_graphs=False)
    drafter = jetspec_drafter(options, target)
    k = len(drafter.hidden_layers)
    start = torch.tensor([0])
    drafter.cache.reserve(context + APPEND_ROWS)
    with torch.no_grad():
        drafter.write_context(torch.randn(context, k, 576, dtype=dtype), start)  # the prefill, uncounted
        drafter.cache.length = context
        root, anchor = torch.tensor([17]), torch.tensor([context])
        rows = torch.randn(APPEND_ROWS, k, 576, dtype=dtype)  # [R, k, H] a round's committed tokens, padded
        counts = {}
        for name, step in (
            ("draft", lambda: drafter.draft_block(root, anchor, drafter.cache.buffers(), options.block_size - 1)),
            ("append", lambda: drafter.write_context(rows, anchor)),
        ):
            step()  # warm: first calls may dispatch one-off operators
            with Ops() as ops:
                step()
            counts[name] = ops.summary()
    return counts


def count_ahead(dtype: torch.dtype, context: int, sequences: int) -> dict[str, dict]:
    """A batched step's drafting ahead for S sequences: each drafter's own `draft_ahead` (S appends
    and S drafts), against one `draft_ahead_together` (their `ContextPool`: one append and one draft
    for all; on a GPU each is one CUDA graph's kernels, so the kernels a step runs scale the same way)."""
    torch.manual_seed(0)
    target = StubTarget(dtype)
    options = HeadOptions(checkpoint="random", layers=2, block_size=8, top_k=8, cuda_graphs=False, lookup=False)
    counts = {}
    for name in ("ahead_each", "ahead_together"):
        drafters = [jetspec_drafter(options, target) for _ in range(sequences)]
        k = len(drafters[0].hidden_layers)
        hidden = [torch.randn(17, k, 576, dtype=dtype) for _ in drafters]  # [N, k, H] a 17-node tree's rows each
        packed = [torch.tensor([3, 0, 4, 9, 12] + [5, 6, 7, 8]) for _ in drafters]  # [2D + 3]: 3 of D + 1 = 4 slots accepted
        with torch.no_grad():
            for d in drafters:
                d.cache.reserve(context + APPEND_ROWS)
                d.write_context(torch.randn(context, k, 576, dtype=dtype), torch.tensor([0]))  # the prefill, uncounted
                d.cache.length = context
            if name == "ahead_each":
                step = lambda: [d.draft_ahead(h, p, 16) for d, h, p in zip(drafters, hidden, packed)]  # noqa: E731
            else:
                step = lambda: drafters[0].draft_ahead_together(drafters, hidden, packed, 16)  # noqa: E731
            step()  # warm (the together call makes the pool here)
            with Ops() as ops:
                step()
        counts[name] = ops.summary()
    return counts


def print_table(counts: dict[str, dict]) -> None:
    names = sorted(set().union(*(c["per_op"] for c in counts.values())))
    w = max(10, *(len(step) + 2 for step in counts))
    print(f"{'aten op':<44}" + "".join(f"{step:>{w}}" for step in counts))
    for op in names:
        print(f"{op:<44}" + "".join(f"{c['per_op'].get(op, 0):>{w}}" for c in counts.values()))
    for row in ("compute", "views", "total"):
        print(f"{'= ' + row:<44}" + "".join(f"{c[row]:>{w}}" for c in counts.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--context", type=int, default=300, help="committed context rows before the draft")
    p.add_argument("--together", type=int, default=0, metavar="S",
                   help="also count a batched step's drafting ahead for S sequences, each alone and together")
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "head_ops.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    counts = count(getattr(torch, args.dtype), args.context)
    if args.together:
        counts |= count_ahead(getattr(torch, args.dtype), args.context, args.together)
    print_table(counts)
    import jetspec

    checkout = Path(jetspec.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    run = run_row(shlex.join([Path(sys.executable).name, *sys.argv]), {})
    row = {"kind": "head_ops", "label": args.label, "checkout": str(checkout), "commit": commit, "dtype": args.dtype,
           "context": args.context, "sequences": args.together or None, **{k: run[k] for k in ("date", "machine", "command", "python", "torch")},
           "counts": counts}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    append_row(args.out, row)
    print(json.dumps({k: v for k, v in row.items() if k != "counts"}))


if __name__ == "__main__":
    main()
