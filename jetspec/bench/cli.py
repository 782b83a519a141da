"""`jetspec bench --config FILE`: the subcommand's arguments and what it prints."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="bench config (TOML, YAML or JSON), e.g. bench/configs/cpu_smoke.toml")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="keep finished rows of an earlier run; do the rest")
    again.add_argument("--overwrite", action="store_true", help="delete earlier results of this bench first")
    again.add_argument("--summarize-only", action="store_true", dest="summarize_only",
                       help="decode nothing: summary rows, RESULTS.md and plots from the rows the results file holds")
    p.add_argument("--limit", type=int, help="at most this many prompts per dataset (a quick look)")
    p.add_argument("--max-minutes", type=float, dest="max_minutes", help="start no new prompt after this long")
    p.add_argument("--output", help="folder for results/, plots/ and RESULTS.md (default: the config's, else ./jetspec-bench; "
                                        "the repository's bench/ only when named here)")
    p.add_argument("--target-path", dest="target_path", help="a Hugging Face model folder for the configured target")
    p.add_argument("--shard", help="I/N: run every N-th prompt from the I-th (N processes side by side; then --resume sums up)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_line(args: argparse.Namespace) -> str:
    parts = ["jetspec", "bench", "--config", args.config]
    for flag in ("resume", "overwrite", "summarize_only", "no_progress"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    for flag in ("limit", "max_minutes", "output", "target_path", "shard"):
        if getattr(args, flag) is not None:
            parts += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return shlex.join(parts)


def run_from_args(args: argparse.Namespace) -> int:
    from ..core.config import read_config_file
    from ..core.distributed import current
    from ..core.errors import ConfigError
    from .config import BenchConfig
    from .runner import run_bench

    data = read_config_file(args.config)
    data.setdefault("name", args.config.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    if args.output:
        data["output"] = args.output
    if args.target_path:
        target = data.get("target", {"name": "decoder"})
        data["target"] = {**({"name": target} if isinstance(target, str) else target), "path": args.target_path}
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {args.limit}")
        data["count"] = min(data.get("count") or args.limit, args.limit)
        data["datasets"] = [
            {**d, "count": min(d.get("count") or args.limit, args.limit)} if isinstance(d, dict) else d
            for d in data.get("datasets", [])
        ]
    shard = None
    if args.shard is not None:
        i, _, n = args.shard.partition("/")
        if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
            raise ConfigError(f"--shard must be I/N with 0 <= I < N, got '{args.shard}'")
        shard = (int(i), int(n))
    config = BenchConfig.parse(data)
    ranks = current()
    if args.summarize_only and ranks is not None and not ranks.leads:
        return 0  # one summary, by rank 0
    outcome = run_bench(
        config, resume=args.resume, overwrite=args.overwrite, command=command_line(args),
        progress=not args.no_progress, max_minutes=args.max_minutes, shard=shard, summarize_only=args.summarize_only,
        ranks=None if args.summarize_only else ranks,
    )
    for s in outcome.summaries:
        tau = "–" if s["tau"] is None else f"{s['tau']:.2f}"
        speed = "–" if s["speedup"] is None else f"{s['speedup']:.2f}x"
        same = "–" if s["identical"] is None else f"{s['identical']:.0%}"
        print(f"{s['dataset']:<22} {s['pipeline']:<20} τ {tau:>5}  speedup {speed:>6}  identical {same:>4}  ({s['prompts']} prompts)")
    print(f"results: {outcome.results}\nsummary: {outcome.markdown}\nplots:   {', '.join(map(str, outcome.plots))}")
    if outcome.stopped_early:
        print("stopped at the time limit; run again with --resume to finish", file=sys.stderr)
    if outcome.errors:
        print(f"{len(outcome.errors)} generation(s) failed; see the 'error' rows", file=sys.stderr)
    return 1 if outcome.errors else 0
