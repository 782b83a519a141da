"""An alternating A/B of `bench/batched_throughput.py` read in pairs (issue 20): each run of the older
tree beside the run of the working tree that followed it.

    python -m bench.ab_pairs BEFORE.jsonl AFTER.jsonl [--label-before L] [--label-after L]

`bash bench/device/h200.sh ab-batched` runs before / after / before / after ... in one call
(AB_BATCHED_TIMES pairs) and appends each run's rows to batched_throughput_{before,after}.jsonl;
run r of a side is its r-th row of each variant (file order). A lent machine's host speed drifts
by up to 1.5x within a call (bench/RESULTS.md, 2026-12-07 19:09), so one side's tok/s against the
other's means little. Two readings resist the drift:

    paired     after_r / before_r for each variant: runs r of both sides were adjacent in time
    in-run     (best spec / best plain) within one run, after_r over before_r: a drift that slows both
               engines of a run alike cancels

Each is printed per pair, then its median (of an even count the mean of the middle two)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .batched_throughput import median


def runs(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """A side's rows in file order -> per run {variant: tok/s}: run r holds each variant's r-th row."""
    out: list[dict[str, float]] = []
    seen: dict[str, int] = {}
    for r in rows:
        if r.get("kind", "batched") != "batched" or r.get("engine") == "hf":
            continue
        k = seen.get(r["variant"], 0)
        seen[r["variant"]] = k + 1
        if k == len(out):
            out.append({})
        out[k][r["variant"]] = r["tokens_per_s"]
    return out


def best_ratio(run: dict[str, float], batch: int) -> float | None:
    """Best speculative tok/s over best plain tok/s at `batch` in one run (None: either is missing)."""
    at = {v: t for v, t in run.items() if v.endswith(f"@{batch}")}
    specs = [t for v, t in at.items() if v.startswith("spec")]
    plains = [t for v, t in at.items() if v.startswith("plain")]
    return max(specs) / max(plains) if specs and plains else None


def table(before: list[dict[str, float]], after: list[dict[str, float]]) -> list[str]:
    """The report's lines: per variant the pairs' tok/s and paired ratios, then per batch size the
    in-run ratios of both sides and their quotient."""
    pairs = list(zip(before, after))
    if not pairs:
        raise ValueError("no pair of runs: each side needs at least one run of batched rows")
    variants = [v for v in after[0] if all(v in b and v in a for b, a in pairs)]
    lines = [f"{len(pairs)} pair(s) of runs; tok/s before -> after per pair, then after / before"]
    for v in variants:
        ratios = [a[v] / b[v] for b, a in pairs]
        cells = "  ".join(f"{b[v]:7.0f} -> {a[v]:7.0f}" for b, a in pairs)
        lines.append(f"{v:>16}  {cells}  | paired {' '.join(f'{x:.2f}' for x in ratios)}  median {median(ratios):.2f}x")
    sizes = sorted({int(v.rsplit("@", 1)[1]) for v in variants if "@" in v})
    for b in sizes:
        inner = [(best_ratio(x, b), best_ratio(y, b)) for x, y in pairs]
        inner = [(x, y) for x, y in inner if x is not None and y is not None]
        if not inner:
            continue
        q = [y / x for x, y in inner]
        lines.append(f"batch {b:>3}: best spec / best plain in-run, before {' '.join(f'{x:.2f}' for x, _ in inner)} "
                     f"(median {median([x for x, _ in inner]):.2f}x), after {' '.join(f'{y:.2f}' for _, y in inner)} "
                     f"(median {median([y for _, y in inner]):.2f}x); after / before {median(q):.2f}x")
    return lines


def read(path: Path, label: str | None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if label is None or r.get("label") == label]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab_pairs", description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--label-before", help="only rows of this label (a results file that holds several A/Bs)")
    ap.add_argument("--label-after")
    args = ap.parse_args(argv)
    try:
        before, after = (runs(read(p, lab)) for p, lab in ((args.before, args.label_before), (args.after, args.label_after)))
        print("\n".join(table(before, after)))
    except (OSError, ValueError, KeyError) as e:
        print(f"ab_pairs: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
