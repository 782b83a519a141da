"""The head recipe ablation (issue 17, part 3): every variant of a config trained on one corpus,
accumulating across calls (the GPU is lent for minutes at a time), then compared on one yardstick.

    python bench/head_ablation.py train --config bench/head_ablation.toml --root DIR \
        --target MODEL --corpus CORPUS --minutes M [--only NAME,NAME] [--parallel N] [--steps S]
    python bench/head_ablation.py table --config bench/head_ablation.toml --root DIR [DIR ...] [--at-step N] [--only NAMES] [--out FILE.jsonl]
    python bench/head_ablation.py tau-config --config bench/head_ablation.toml --root DIR --out FILE.toml

train       each variant gets M minutes of this call, in config order: its first call starts the run
            (`jetspec train-head --out ROOT/NAME` with [base] and the variant's options), later ones
            resume it (`--resume ROOT/NAME`: weights, optimizer, data cursor, RNG). `--parallel N`: N
            variants at a time, one process each (the device is shared: a variant's minutes buy fewer
            steps, the table says how many); `--steps S`: the schedule's horizon of new runs.
table       one row per variant from ROOT/NAME/log.jsonl: steps, minutes of training, and the last
            validation — held-out forward KL (unweighted whatever the loss: `train.evaluate`), chain τ,
            rank-1 accuracy by depth; a markdown table, and rows appended to --out with command,
            machine and date. `--at-step N`: the validation at step N instead of the last (variants
            compared at equal steps of the same schedule; "–" where a run has none there); several
            roots: each variant from the first that holds its run (passes trained in different calls).
tau-config  a `jetspec bench` replay config (τ at budgets 16/64/256 on the four prompt sets) with one
            pipeline per trained variant, the drafter its kind names (the causal head alone:
            `jetspec` with `lookup = false`).

The config (not a `jetspec bench` config) holds `[base]` (train-head options, snake_case) and
`[[variants]]` (a `name` and the options it changes)."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from jetspec.core.errors import InputError
from jetspec.drafters.head.train_cli import main as train_head

CALL_ONLY = ("minutes",)  # options of a call, not of a run


def load_config(path: str | Path) -> tuple[dict, list[dict]]:
    """-> (base options, variants): each variant a dict with `name` and its option changes."""
    data = tomllib.loads(Path(path).read_text())
    base, variants = dict(data.get("base", {})), [dict(v) for v in data.get("variants", [])]
    names = [v.get("name") for v in variants]
    if not variants or not all(isinstance(n, str) and n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise InputError(f"{path}: needs [[variants]], each with a name of letters, digits, - and _ (got {names})")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: variant names must be distinct (got {names})")
    return base, variants


def flags(options: dict) -> list[str]:
    """train-head flags of `options` (lists: comma-joined)."""
    out = []
    for key, value in options.items():
        if key == "name":
            continue
        out += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return out


def chosen(variants: list[dict], only: list[str] | None, config: str) -> list[dict]:
    """The variants `--only` names (all without it), in config order; a name not in the config is an InputError."""
    if not only:
        return variants
    known = [v["name"] for v in variants]
    if any(n not in known for n in only):
        raise InputError(f"--only names {', '.join(n for n in only if n not in known)}: not variants of {config} ({', '.join(known)})")
    return [v for v in variants if v["name"] in only]


def train(config: str, root: Path, target: str, corpus: str, minutes: float, only: list[str] | None = None,
          parallel: int = 1, steps: int | None = None) -> None:
    """Each variant (of `only`, if given) trains for `minutes` of this call: its first call starts the run,
    later ones resume it. `parallel` > 1: that many variants at a time, each `jetspec train-head` in its
    own process sharing the device (its output in ROOT/NAME.log); one that fails is named, the others
    go on. `steps`: the horizon of runs started here, instead of [base]'s."""
    base, variants = load_config(config)
    if steps is not None:
        base = {**base, "steps": steps}
    calls = []
    for v in chosen(variants, only, config):
        run = root / v["name"]
        if (run / "run.json").is_file():
            argv = ["--resume", str(run)]
        else:
            argv = ["--target", target, "--corpus", corpus, "--out", str(run), *flags({**base, **v})]
        calls.append((v["name"], [*argv, "--minutes", str(minutes), "--no-progress"]))
    if parallel <= 1:
        for name, argv in calls:
            print(f"head_ablation: {name}: {minutes} min", file=sys.stderr, flush=True)
            train_head(argv)
        return
    root.mkdir(parents=True, exist_ok=True)
    running: list[tuple[str, subprocess.Popen]] = []
    failed: list[str] = []

    def reap(block: bool) -> None:
        for name, proc in list(running):
            if block or proc.poll() is not None:
                if proc.wait() != 0:
                    failed.append(f"{name} (exit {proc.returncode}, see {root / name}.log)")
                running.remove((name, proc))

    for name, argv in calls:
        while len(running) >= parallel:
            time.sleep(1.0)
            reap(block=False)
        print(f"head_ablation: {name}: {minutes} min (parallel {parallel})", file=sys.stderr, flush=True)
        with (root / f"{name}.log").open("w") as log:
            running.append((name, subprocess.Popen([sys.executable, "-m", "jetspec.cli", "train-head", *argv], stdout=log, stderr=log)))
    reap(block=True)
    if failed:
        raise InputError(f"training failed for {'; '.join(failed)}")


def variant_row(roots: list[Path], variant: dict, base: dict, at_step: int | None = None) -> dict:
    """The variant's settings, training so far and last validation (or the one at `at_step`), from
    ROOT/NAME/log.jsonl of the first root that has it."""
    logs = [root / variant["name"] / "log.jsonl" for root in roots]
    log = next((p for p in logs if p.is_file()), None)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log else []
    evals = [r for r in rows if "eval" in r]
    calls = [r for r in rows if "run" in r]
    if at_step is not None:
        evals = [r for r in evals if r["step"] == at_step] or [{"step": at_step, "eval": {}}]
    last = evals[-1] if evals else {"step": 0, "eval": {}}
    settings = {k: v for k, v in {**base, **variant}.items() if k != "name"}
    run = log.parent / "run.json" if log else None
    if run is not None and run.is_file():  # the run's own horizon (`--steps` of the call that started it)
        settings["steps"] = json.loads(run.read_text())["steps"]
    return {"kind": "head_ablation", "variant": variant["name"], "settings": settings,
            "steps": calls[-1]["steps_total"] if calls else 0, "minutes": calls[-1]["minutes_total"] if calls else 0.0,
            "dtype": calls[-1]["run"].get("dtype") if calls else None,
            "trained_on": calls[-1]["run"].get("device") if calls else None,  # `machine`: where the table was made
            "eval_step": last["step"], **{k: last["eval"].get(k) for k in ("eval_kl", "eval_tau_chain", "eval_acc_by_depth")}}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | changes | steps | minutes | held-out KL | chain τ | acc@1 | acc@2 | acc@4 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = r["eval_acc_by_depth"] or []
        at = lambda d: f"{acc[d - 1]:.3f}" if len(acc) >= d else "–"  # noqa: E731
        kl = f"{r['eval_kl']:.3f}" if r["eval_kl"] is not None else "–"
        tau = f"{r['eval_tau_chain']:.2f}" if r["eval_tau_chain"] is not None else "–"
        lines.append(f"| {r['variant']} | {r.get('changes', '')} | {r['steps']} | {r['minutes']:.1f} | {kl} | {tau} | "
                     f"{at(1)} | {at(2)} | {at(4)} |")
    return "\n".join(lines)


def table(config: str, roots: list[Path], out: str | None, at_step: int | None = None,
          only: list[str] | None = None) -> list[dict]:
    base, variants = load_config(config)
    rows = [variant_row(roots, v, base, at_step) | {"changes": ", ".join(f"{k}={v[k]}" for k in v if k != "name") or "(base)"}
            for v in chosen(variants, only, config)]  # fmt: skip
    print(markdown(rows))
    if out:
        stamp = {"machine": _machine(), "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                 "command": " ".join(["python", *sys.argv])}
        with Path(out).open("a") as f:
            for r in rows:
                f.write(json.dumps(r | stamp) + "\n")
    return rows


def tau_config(config: str, root: Path, out: str, count: int = 50) -> str:
    """A replay config over the trained variants (those with a head.json)."""
    _, variants = load_config(config)
    lines = [f"# τ by replay of the head ablation's variants ({config}, heads in {root}); written by bench/head_ablation.py",
             'name = "head_ablation_tau"', "replay = true", 'target = { name = "decoder", dtype = "float32", device = "cuda" }',
             'datasets = ["math500", "gsm8k", "humaneval", "spec_bench/mt_bench"]', f"count = {count}", "seed = 0",
             "max_new_tokens = 256", "warmup_tokens = 8", ""]  # fmt: skip
    for v in variants:
        head = root / v["name"]
        if not (head / "head.json").is_file():
            continue
        kind = json.loads((head / "head.json").read_text())["kind"]
        drafter = (f'{{ name = "jetspec", checkpoint = "{head}", lookup = false }}' if kind == "causal"
                   else f'{{ name = "{kind}", checkpoint = "{head}" }}')
        lines += ["[[pipelines]]", f'name = "ablation-{v["name"]}"', f"drafter = {drafter}", "budgets = [16, 64, 256]", ""]
    text = "\n".join(lines)
    Path(out).write_text(text)
    return text


def _machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:
        pass
    return f"{platform.machine()} CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["train", "table", "tau-config"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--root", required=True, nargs="+", help="one run folder per variant inside (table: several, first wins)")
    ap.add_argument("--at-step", type=int, default=None, help="table: the validation at this step, not the last")
    ap.add_argument("--target", help="train: the frozen target (HF folder or .gguf)")
    ap.add_argument("--corpus", help="train: a corpus made by `jetspec make-corpus`")
    ap.add_argument("--minutes", type=float, default=1.0, help="train: minutes per variant in this call")
    ap.add_argument("--only", default=None, help="train, table: comma-separated variant names")
    ap.add_argument("--parallel", type=int, default=1, help="train: variants trained at a time, one process each")
    ap.add_argument("--steps", type=int, default=None, help="train: the horizon of runs started by this call (default: [base]'s)")
    ap.add_argument("--out", default=None, help="table: rows appended here (.jsonl); tau-config: the .toml written")
    a = ap.parse_args(argv)
    roots = [Path(r) for r in a.root]
    root = roots[0]
    try:
        if a.what != "table" and len(roots) > 1:
            raise InputError(f"{a.what} takes one --root, got {len(roots)}")
        if a.what == "train":
            if not (a.target and a.corpus):
                raise InputError("train needs --target and --corpus")
            start = time.monotonic()
            if a.parallel < 1 or (a.steps is not None and a.steps < 1):
                raise InputError(f"--parallel and --steps must be >= 1, got {a.parallel} and {a.steps}")
            train(a.config, root, a.target, a.corpus, a.minutes, a.only.split(",") if a.only else None, a.parallel, a.steps)
            print(f"head_ablation: trained for {(time.monotonic() - start) / 60:.1f} min", file=sys.stderr)
        elif a.what == "table":
            table(a.config, roots, a.out, a.at_step, a.only.split(",") if a.only else None)
        else:
            if not a.out:
                raise InputError("tau-config needs --out FILE.toml")
            tau_config(a.config, root, a.out)
    except InputError as e:
        print(f"head_ablation: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
