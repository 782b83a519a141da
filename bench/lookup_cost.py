"""What a prompt lookup costs the host per sequence-round (issue 20): `NgramDrafter.propose_flat`,
the trie a grown step sends to the device, on the target's own answers.

    python -m bench.lookup_cost [--rows 64] [--repeats 3] [--calibration shipped|none] [--label L] [--out FILE]

Setup: `--rows` answers of the SmolLM2 self-distilled corpus (`bench/corpus/`, training data: no
test set), every 90th row of its first chunk. Each answer is replayed as a generation would see it:
from the prompt's end, a round every 4 tokens (τ ≈ 4, the default drafter's on GSM8K) up to 256
generated tokens, each round one `propose_flat(state, 16)` (the index extended, the suffix matched,
the trie made and scored). µs per call = the least of `--repeats` passes' time / calls; nodes per
call = the tries' mean size. With `--calibration shipped` the edges are scored by the shipped
head's `lookup.json`, as the default drafter scores them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from jetspec.bench.rows import append_row, run_row
from jetspec.core.interfaces import DecodeState
from jetspec.drafters.ngram import NgramDrafter, NgramOptions

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "bench/corpus/SmolLM2-135M-Instruct.tar.xz"
SHIPPED = ROOT / "jetspec/assets/heads/SmolLM2-135M-Instruct/causal/lookup.json"
STRIDE, NEW, BUDGET = 4, 256, 16


def answers(rows: int) -> list[tuple[list[int], int]]:
    """(tokens, prompt length) of `rows` corpus rows, every 90th of its first chunk."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(CORPUS) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("chunk-00000.safetensors"))
        tar.extract(member, tmp, filter="data")
        chunk = load_file(Path(tmp) / member.name)
    off, lens, toks = chunk["offsets"].tolist(), chunk["prompt_lens"].tolist(), chunk["tokens"].tolist()
    return [(toks[off[i] : off[i + 1]], lens[i]) for i in range(0, len(lens), 90)][:rows]


def one_pass(rows: list[tuple[list[int], int]], calibration: str | None) -> tuple[float, int, int]:
    """-> (seconds inside propose_flat, calls, nodes)."""
    seconds, calls, nodes = 0.0, 0, 0
    for tokens, prompt in rows:
        drafter = NgramDrafter(NgramOptions(calibration=calibration))
        state = DecodeState(tokens=list(tokens[:prompt]), prompt_len=prompt)
        drafter.reset(state)
        for end in range(prompt, min(len(tokens), prompt + NEW), STRIDE):
            state.tokens = tokens[:end]
            t0 = time.perf_counter()
            trie = drafter.propose_flat(state, BUDGET)
            seconds += time.perf_counter() - t0
            calls += 1
            nodes += 0 if trie is None else trie.size
    return seconds, calls, nodes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibration", choices=("shipped", "none"), default="shipped")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        raise SystemExit(f"lookup_cost: --rows and --repeats must be at least 1, got {args.rows} and {args.repeats}")
    rows = answers(args.rows)
    calibration = str(SHIPPED) if args.calibration == "shipped" else None
    seconds, calls, nodes = min(one_pass(rows, calibration) for _ in range(args.repeats))
    stamp = run_row("python -m bench.lookup_cost " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    row = {"kind": "lookup_cost", "label": args.label, "calibration": args.calibration, "dtype": "float64",  # Python floats
           "rows": len(rows), "calls": calls,
           "us_per_call": 1e6 * seconds / calls, "nodes_per_call": nodes / calls,
           **{k: stamp[k] for k in ("date", "machine", "command", "python")}}  # fmt: skip
    print(f"{row['us_per_call']:.1f} us per propose_flat, {row['nodes_per_call']:.1f} nodes per trie, {calls} calls ({args.calibration})")
    if args.out:
        append_row(args.out, row)


if __name__ == "__main__":
    main()
