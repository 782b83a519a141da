"""Summary rows (one per dataset x pipeline) and the Markdown table in RESULTS.md.

Aggregates are ratios of sums over the prompts, not means of per-prompt ratios:
τ = Σ new tokens ÷ Σ rounds, tokens/s = Σ new tokens ÷ Σ wall, speedup = Σ plain wall ÷ Σ wall
(the plain wall of the same prompts, measured in the same run), identical = share of prompts
whose output equals plain decoding token for token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from ..core.files import locked, write_atomic

SUMMARY_FIELDS = (
    "dataset", "pipeline", "target", "drafter", "scorer", "verifier", "budget", "temperature", "prompts", "errors",
    "tau", "tokens_per_s", "speedup", "identical", "mismatches", "near_ties", "seconds", "acceptance_by_depth",
    "faithfulness", "peak_mem_bytes", "machine", "date", "command",
)
DESCRIBE = ("target", "dtype", "exact", "drafter", "scorer", "verifier", "kv_cache", "attention", "budget", "temperature",
            "replay")


def summarize(
    prompt_rows: Iterable[dict[str, Any]], run: dict[str, Any], runs: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """`run`: this invocation; `runs` (id -> run row): the invocations that wrote the prompt rows,
    so a summary names the commands, machine and date that measured it, not the one that summed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in prompt_rows:
        groups.setdefault((r["dataset"], r["pipeline"]), []).append(r)
    out = []
    for (dataset, pipeline), rows in groups.items():
        ok = [r for r in rows if not r.get("error")]
        first = rows[0]
        s: dict[str, Any] = {"kind": "summary", "dataset": dataset, "pipeline": pipeline, "kind_of": first["kind"]}
        s.update({k: first.get(k) for k in DESCRIBE})
        s.update(prompts=len(ok), errors=len(rows) - len(ok))
        wall = sum(r["wall_s"] for r in ok)
        new = sum(r["new_tokens"] for r in ok)
        rounds = sum(r.get("rounds") or 0 for r in ok)
        s["tau"] = new / rounds if rounds and first["kind"] != "peer" else None
        s["tokens_per_s"] = new / wall if wall > 0 else None
        plain = sum(r["plain_wall_s"] for r in ok if r.get("plain_wall_s"))
        s["speedup"] = plain / wall if wall > 0 and plain > 0 else None
        checked = [r for r in ok if r.get("identical") is not None]
        s["identical"] = sum(r["identical"] for r in checked) / len(checked) if checked else None
        mism = [r["mismatch"] for r in ok if r.get("mismatch")]
        s["mismatches"] = len(mism)
        s["near_ties"] = sum(bool(m.get("near_tie")) for m in mism)
        s["seconds"] = _sum_dicts(r.get("seconds") or {} for r in ok)
        depth = [0] * max((len(r.get("accepted_by_depth") or []) for r in ok), default=0)
        for r in ok:
            for d, n in enumerate(r.get("accepted_by_depth") or []):
                depth[d] += n
        s["acceptance_by_depth"] = [n / rounds for n in depth] if rounds else []  # share of rounds accepting >= d+1
        faith = [r["faithfulness"] for r in ok if r.get("faithfulness")]
        s["faithfulness"] = (
            sum(f["faithful"] * f["rounds"] for f in faith) / sum(f["rounds"] for f in faith) if faith else None
        )
        peaks = [r["peak_mem_bytes"] for r in ok if r.get("peak_mem_bytes") is not None]
        s["peak_mem_bytes"] = max(peaks) if peaks else None
        made = [runs[i] for i in sorted({r.get("run") for r in ok} & set(runs or {}))] or [run]  # ids sort by time
        s.update(
            machine=" + ".join(sorted({m["machine"] for m in made})), date=made[-1]["date"],
            command=" && ".join(dict.fromkeys(m["command"] for m in made)),
        )
        out.append(s)
    return out


def _sum_dicts(dicts: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0.0) + v
    return total


def fmt(v: Any, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    head = "| dataset | pipeline | drafter | budget | prompts | τ | tok/s | speedup | identical | mismatches (near-tie) | faithful | peak MiB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in sorted(summaries, key=lambda s: (s["dataset"], s["kind_of"] != "plain", s["kind_of"] == "peer", s["pipeline"])):
        peak = None if s["peak_mem_bytes"] is None else s["peak_mem_bytes"] / 2**20
        errors = f" ({s['errors']} errors)" if s["errors"] else ""
        lines.append(
            f"| {s['dataset']} | {s['pipeline']} | {s['drafter'] or '–'} | {fmt(s['budget'], 'd')} | {s['prompts']}{errors} "
            f"| {fmt(s['tau'])} | {fmt(s['tokens_per_s'], '.1f')} | {fmt(s['speedup'])}× | {fmt(s['identical'], '.0%')} "
            f"| {s['mismatches']} ({s['near_ties']}) | {fmt(s['faithfulness'], '.0%')} | {fmt(peak, '.0f')} |"
        )
    return "\n".join(lines)


def write_results_md(path: Path, name: str, run: dict[str, Any], summaries: list[dict[str, Any]], plots: list[Path]) -> None:
    """Replace this bench's section of RESULTS.md (or append it)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    skipped = "".join(f"\n* peer `{p}` skipped: {why}" for p, why in run["skipped_peers"].items())
    pics = "".join(f"\n![{p.stem}](plots/{p.name})" for p in plots)
    section = (
        f"{begin}\n## {name}\n\n* command: `{run['command']}`\n* machine: {run['machine']}\n* date: {run['date']}"
        f"\n* torch {run['torch']}, Python {run['python']}{skipped}\n\n{markdown_table(summaries)}\n{pics}\n{end}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):  # two benches writing their sections into one RESULTS.md keep both
        text = path.read_text() if path.is_file() else "# Benchmark results\n\nWritten by `jetspec bench`; one section per bench config.\n"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
        write_atomic(path, text)
