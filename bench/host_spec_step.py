"""What the batched engine itself costs the host per sequence and step of speculative decoding, on
the CPU (issue 20): the target's forward replaced by a deterministic rule, so every second is the
engine's — drafting, tree building and checks, metadata, the tree upload, acceptance, commit.

    python -m bench.host_spec_step [--batch-sizes 8,32,64] [--prompts-per-slot 4] [--new 128] [--repeats 3] \
        [--drafter ngram|jetspec] [--label after] [--out bench/results/host_spec_step.jsonl]

Setup: a tiny random llama through the real `decoder` target (paged KV, torch attention, n-gram
drafts, best-first, budget 16, `accept_on_device = "always"`: the device path's host side), whose
`forward_batch` is replaced by logits that put all mass on next = F[token] (a fixed random map:
every walk ends in a cycle, so prompt lookup finds matches) except at positions divisible by 5,
where next = G[token] (another map: some drafts fail). `--prompts-per-slot` waves of B prompts of
40 tokens, `--new` tokens each. µs per sequence-step = wall time / sum of the sequences' rounds (least
of `--repeats`), each phase's µs per sequence-step and share (`GenerationStats.seconds`, summed over sequences) and the share
of the wall that Python's cyclic garbage collector ran (`gc.callbacks`) in that repeat. A CPU
figure: it ranks host costs and shows changes to them; on a GPU the same Python costs the host
about as much, plus the launches this stub does not make.

`--drafter jetspec`: the default drafter's kind of proposal instead — a random head (7 drafted
depths, top-16, as the shipped SmolLM2 head) scored by the shipped head's rates
(`head_rates.json`), merged with prompt lookup; the stub's hidden states are zeros. Its drafts
are not the target's rule (τ is low): the figure is the host cost of its rounds (drafting together
in one pooled job, calibration, the merged tree), not a speed. `--uncalibrated`: the head's log-probs as
they are (no rates), so that the step's trees are grown on the device form's code (eagerly, here) as on a
GPU: each row then also counts the device build's graph shapes the run would capture on CUDA
(`best_first_device.graph_key`).
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import jetspec
from jetspec.bench.rows import append_row, run_row
from jetspec.core.records import TargetOutput
from jetspec.scorers import best_first
from jetspec.scorers.best_first_device import graph_key
from jetspec.drafters.head import drafter as head_drafter
from jetspec.drafters.head.calibration import HeadCalibration
from jetspec.testing.models import tiny_hf_model

VOCAB = 256
HIDDEN = 64
RATES = Path(__file__).resolve().parents[1] / "jetspec/assets/heads/SmolLM2-135M-Instruct/causal/head_rates.json"
FIRST = 8  # tokens below this are never produced (no EOS: every sequence runs to --new)


def rule(seed: int = 0):
    """-> forward_batch(tokens, meta, caches, layers) of the deterministic target."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randint(FIRST, VOCAB, (VOCAB,), generator=g)  # [V] the usual next token
    other = torch.randint(FIRST, VOCAB, (VOCAB,), generator=g)  # [V] the next token at positions % 5 == 0

    def forward_batch(tokens, meta, caches, hidden_layers=()):
        r = tokens.numel()
        nxt = torch.where(meta.positions % 5 == 0, other[tokens], f[tokens])  # [R]
        logits = torch.zeros(r, VOCAB)  # [R, V]
        logits[torch.arange(r), nxt] = 1.0
        hidden = torch.zeros(r, len(hidden_layers), HIDDEN) if hidden_layers else None  # [R, k, H]: a head drafter observes them
        return TargetOutput(logits=logits, hidden=hidden)

    return forward_batch


class GcClock:
    """Seconds the cyclic garbage collector has run since `reset`, timed by `gc.callbacks`."""

    def __init__(self):
        self.seconds, self._t0 = 0.0, 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0

    def reset(self) -> None:
        self.seconds = 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--prompts-per-slot", type=int, default=4)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--drafter", choices=("ngram", "jetspec"), default="ngram")
    ap.add_argument("--uncalibrated", action="store_true", help="--drafter jetspec: no head rates (trees grown on the device form)")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp()) / "model"
    tiny_hf_model("llama", seed=3, vocab=VOCAB, hidden=HIDDEN, layers=2).save_pretrained(folder)
    drafter = {"ngram": {}, "jetspec": dict(checkpoint="random", block_size=8, top_k=16)}[args.drafter]
    if args.drafter == "jetspec" and not args.uncalibrated:  # a random head has no rates file: the shipped head's, as its checkpoint would give them
        rates = HeadCalibration.load(RATES)
        head_drafter.head_calibration = lambda options, head: rates
    pipe = (jetspec.builder().target("decoder", path=str(folder), device="cpu", dtype="float32", cuda_graphs=False)
            .attention("torch").kv_cache("paged").drafter(args.drafter, **drafter)
            .generation(budget=16, max_new_tokens=args.new, accept_on_device="always").build())  # fmt: skip
    pipe.target.forward_batch = rule()
    stamp = run_row("python -m bench.host_spec_step " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    clock = GcClock()
    shapes: set[tuple] = set()  # the device build's graph shapes (CUDA captures one graph per shape)
    eager_grow = best_first.grow

    def counted_grow(p, roots, prefix_lens, budget, max_depth=None):
        shapes.add(graph_key(p, budget, max_depth))
        return eager_grow(p, roots, prefix_lens, budget, max_depth)

    best_first.grow = counted_grow
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = [[FIRST + (i * 7 + j * 3) % (VOCAB - FIRST) for j in range(40)] for i in range(args.prompts_per_slot * b)]  # [P, 40]
        pipe.generate_many(prompts[:b], batch_size=b, max_new_tokens=8)  # warm-up
        best, results, gc_best, shapes_best = float("inf"), [], 0.0, 0
        for _ in range(args.repeats):
            clock.reset()
            shapes.clear()
            t0 = time.perf_counter()
            res = pipe.generate_many(prompts, batch_size=b)
            if time.perf_counter() - t0 < best:
                best, results, gc_best, shapes_best = time.perf_counter() - t0, res, clock.seconds, len(shapes)
        rounds = sum(r.stats.rounds for r in results)
        tokens = sum(len(r.tokens) for r in results)
        phases = {k: sum(r.stats.seconds[k] for r in results) for k in results[0].stats.seconds}
        total = sum(phases.values())
        row = {"kind": "host_spec_step", "label": args.label, "drafter": args.drafter, "batch_size": b, "dtype": "float32", "prompts": len(prompts), "new": args.new,
               "tau": tokens / rounds, "us_per_sequence_step": 1e6 * best / rounds,
               "phase_shares": {k: round(v / total, 3) for k, v in phases.items()},
               "phase_us_per_sequence_step": {k: round(1e6 * v / rounds, 1) for k, v in phases.items()}, "gc_share": round(gc_best / best, 3),
               "device_build_shapes": shapes_best, "uncalibrated": args.uncalibrated,
               **{k: stamp[k] for k in ("date", "machine", "command", "python", "torch")}}  # fmt: skip
        print(f"B={b:>3}  {row['us_per_sequence_step']:7.1f} us per sequence-step  tau {row['tau']:.2f}  "
              + " ".join(f"{k} {v:.0f}" for k, v in row["phase_us_per_sequence_step"].items()) + f" us  | gc {row['gc_share']:.3f} of the wall | device-build shapes {shapes_best}",
              flush=True)
        if args.out:
            append_row(args.out, row)


if __name__ == "__main__":
    main()
