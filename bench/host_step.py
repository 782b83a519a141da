"""Host time of one eager step of the batched engine over the exact decoder, on the CPU (issue 20).

    python -m bench.host_step [--batch-sizes 1,8,32] [--layers 30] [--new 24] [--repeats 3] [--label after] \
        [--out bench/results/host_step.jsonl]

The batched path runs eagerly (no CUDA graphs yet), so on a GPU its step costs what the host
spends on it: Python, torch dispatch and ~190 Triton launches for a 30-layer model. This measures
that host work without a GPU: the real `DecoderTarget` (exact = true, the Triton backend, a paged
pool) of a random llama with `--layers` layers (SmolLM2 has 30; the width is tiny: host work does
not depend on it), run by `generate_many(batch_size=B)`, plain decoding, under Triton's interpreter
with every kernel launch counted and then skipped (the outputs are garbage; the control flow is
the engine's). ms per step = wall time of one wave of B prompts / its steps (least of
`--repeats`); launches and torch operators per step (each computing operator is a kernel launch on
a GPU; views count too: each is host work), and the operators outside the target's forward (the
engine's own: what a step still costs the host when the forward replays a CUDA graph). A CPU figure ranks host costs and shows how they grow
with B; it does not predict a GPU's microseconds (a real launch costs the host more than a skipped one).
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jetspec
from jetspec.bench.rows import append_row, run_row
from jetspec.testing.models import tiny_hf_model


DTYPE = "bfloat16"  # the model's, as a GPU run decodes


class Ops(TorchDispatchMode):
    """Counts torch operators, those outside the target's forward apart (`engine`): what a step
    still costs the host when its forward replays a CUDA graph."""

    def __init__(self) -> None:
        super().__init__()
        self.count = collections.Counter()
        self.engine = 0
        self.in_forward = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[str(func)] += 1
        self.engine += not self.in_forward
        return func(*args, **(kwargs or {}))

    def forward(self, real):
        """`real` (a target's forward_batch) with its operators counted as the forward's."""
        def wrapped(*a, **k):
            self.in_forward = True
            try:
                return real(*a, **k)
            finally:
                self.in_forward = False
        return wrapped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--new", type=int, default=24, help="new tokens per prompt (steps of a wave)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="", help="e.g. before / after, kept in the rows")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel modules are first imported, by the first forward
    from triton.runtime.interpreter import InterpretedFunction

    folder = Path(tempfile.mkdtemp()) / "model"
    tiny_hf_model("llama", seed=3, vocab=256, hidden=64, layers=args.layers).save_pretrained(folder)
    pipe = (jetspec.builder().target("decoder", path=str(folder), device="cpu", dtype=DTYPE, cuda_graphs=False,
                                     exact=True)
            .attention("triton").kv_cache("paged").drafter("ngram")
            .generation(max_new_tokens=args.new, accept_on_device="always").build())  # fmt: skip
    stamp = run_row("python -m bench.host_step " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    launches = [0]

    def skipped(self, *a, grid, warmup, **k):
        launches[0] += 1

    for b in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = [[5 + (i * 7 + j) % 200 for j in range(12)] for i in range(b)]  # [B, 12] token ids
        best = float("inf")
        with patch.object(InterpretedFunction, "run", skipped):
            pipe.generate_many(prompts, batch_size=b, max_new_tokens=2, speculative=False)  # warm-up
            if not launches[0]:
                raise SystemExit("host_step: no Triton launch was intercepted (kernels compiled before TRITON_INTERPRET "
                                 "was set?): run it as its own process, python -m bench.host_step")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = pipe.generate_many(prompts, batch_size=b, speculative=False)
                best = min(best, time.perf_counter() - t0)
            steps = max(r.stats.rounds for r in res)
            launches[0] = 0
            ops = Ops()
            with ops, patch.object(pipe.target, "forward_batch", ops.forward(pipe.target.forward_batch)):
                pipe.generate_many(prompts, batch_size=b, speculative=False)
        row = {"kind": "host_step", "label": args.label, "batch_size": b, "layers": args.layers, "dtype": DTYPE, "steps": steps,
               "host_ms_per_step": 1e3 * best / steps, "launches_per_step": launches[0] / steps,
               "torch_ops_per_step": sum(ops.count.values()) / steps, "engine_ops_per_step": ops.engine / steps,
               **{k: stamp[k] for k in ("date", "machine", "command", "python", "torch")}}  # fmt: skip
        print(f"B={b:>3}  {row['host_ms_per_step']:7.2f} ms/step  launches {row['launches_per_step']:.1f}  "
              f"torch ops {row['torch_ops_per_step']:.0f} (outside the forward {row['engine_ops_per_step']:.0f})", flush=True)
        if args.out:
            append_row(args.out, row)


if __name__ == "__main__":
    main()
