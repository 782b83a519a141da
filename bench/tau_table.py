"""The τ table of a replay run: one line per (dataset, drafter), τ at every budget, rank-1 faithfulness.

    python -m bench.tau_table bench/results/smollm2_h200_tau.jsonl [--faith-budget 64]
    python -m bench.tau_table A.jsonl:jetspec-head,jetspec-rescore B.jsonl:dflash,eagle   # one table of two runs

Several files make one table (runs of the same prompts, e.g. heads retrained apart); `FILE:NAME,NAME` takes
only those drafters' lines from that file, and a (dataset, drafter) line found in two files is an error.

Reads the `jetspec bench` results file: its summary rows give τ (new tokens ÷ rounds, pooled over
the prompts) and `faithful` (share of sampled rounds whose rank-1 branch log-likelihood under the
target is within 5 nats of the target's own greedy continuation of the same length); its spec rows
give the mean gap, mean over sampled rounds of  log p(greedy) − log p(rank-1 branch)  in nats.
Prints a markdown table: `prompts` is the number in the summary at the smallest and largest budget
when they differ (a run stopped by its time limit).

Drafter names (issue 17): jetspec (the default: head + prompt lookup), jetspec-head (the causal head
alone), jetspec-rescore, dflash, eagle, ngram, in that order. A results file of the old convention
(it has a `jetspec-lookup` pipeline: there `jetspec` is the head alone) is printed in the new names;
the file itself is not rewritten."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from jetspec.bench.report import fmt
from jetspec.bench.rows import read_rows


ORDER = ("jetspec", "jetspec-head", "jetspec-rescore", "jetspec-rescore-p3", "dflash", "eagle", "ngram")
OLD_NAMES = {"jetspec": "jetspec-head", "jetspec-lookup": "jetspec", "jetspec-t1": "jetspec-head-t1"}


def renamed(rows: list[dict]) -> list[dict]:
    """`rows` in today's drafter names (a file of the old convention is recognized by `jetspec-lookup`)."""
    if not any(str(r.get("pipeline", "")).startswith("jetspec-lookup@") or r.get("pipeline") == "jetspec-lookup" for r in rows):
        return rows
    out = []
    for r in rows:
        name, at, budget = str(r.get("pipeline", "")).partition("@")
        out.append({**r, "pipeline": OLD_NAMES.get(name, name) + at + budget} if "pipeline" in r else r)
    return out


def tau_table(rows: list[dict], faith_budget: int = 64) -> str:
    rows = renamed(rows)
    summaries = [r for r in rows if r.get("kind") == "summary" and r.get("kind_of") == "spec"]
    budgets = sorted({s["budget"] for s in summaries})
    by_line: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for s in summaries:
        by_line[(s["dataset"], s["pipeline"].rsplit("@", 1)[0])][s["budget"]] = s
    gaps: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for r in rows:
        f = r.get("faithfulness")
        if r.get("kind") == "spec" and r.get("budget") == faith_budget and f and f.get("mean_gap_nats") is not None:
            gaps[(r["dataset"], r["pipeline"].rsplit("@", 1)[0])].append((f["mean_gap_nats"], f["rounds"]))

    head = ["dataset", "drafter", "prompts", *(f"τ@{b}" for b in budgets),
            f"faithful@{faith_budget}", f"mean gap@{faith_budget} (nats)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    drafters = sorted(dict.fromkeys(k[1] for k in by_line), key=lambda d: ORDER.index(d) if d in ORDER else len(ORDER))
    for ds in datasets:
        for dr in drafters:
            line = by_line.get((ds, dr))
            if not line:
                continue
            counts = [line[b]["prompts"] for b in budgets if b in line]
            prompts = str(counts[0]) if len(set(counts)) == 1 else f"{counts[-1]}/{counts[0]}"
            taus = [fmt(line[b]["tau"]) if b in line else "–" for b in budgets]
            faith = line.get(faith_budget, {}).get("faithfulness")
            g = gaps.get((ds, dr))
            gap = sum(v * n for v, n in g) / sum(n for _, n in g) if g else None
            lines.append("| " + " | ".join([ds, dr, prompts, *taus, fmt(faith, ".0%"), fmt(gap, ".1f")]) + " |")
    return "\n".join(lines)


def drafter_of(row: dict) -> str | None:
    return str(row["pipeline"]).rsplit("@", 1)[0] if row.get("kind") in ("summary", "spec") and "pipeline" in row else None


def merged(sources: list[str]) -> list[dict]:
    """The rows of `FILE[:NAME,NAME]` sources (each in today's names, only the named drafters), as one run's."""
    rows, owner = [], {}
    for source in sources:
        path, _, names = source.partition(":")
        if not Path(path).is_file():
            raise SystemExit(f"tau_table: no results file at {path}; pass `jetspec bench` results .jsonl files")
        keep = set(names.split(",")) if names else None
        for r in renamed(read_rows(Path(path))):
            d = drafter_of(r)
            if d is None or d == "plain" or (keep is not None and d not in keep):
                continue
            line = (r["dataset"], d)
            if owner.setdefault(line, path) != path:
                raise SystemExit(f"tau_table: {d} on {r['dataset']} is in both {owner[line]} and {path}; name the drafters "
                                 "to take from each (FILE:NAME,NAME)")
            rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="FILE or FILE:DRAFTER,DRAFTER (only those drafters from that file)")
    ap.add_argument("--faith-budget", type=int, default=64)
    args = ap.parse_args()
    print(tau_table(merged(args.results), args.faith_budget))


if __name__ == "__main__":
    main()
