"""Train the three draft heads of one target in ONE call, within a time budget, and check them.

    python -m bench.train_heads_gpu --target default --out /tmp/heads --export runs/heads --minutes 6.5

1. self-distillation data: the target greedily answers the training prompts (chat template) for at
   most `--gen-fraction` of the budget; answers are saved to OUT/answers.safetensors and reused
   by a rerun (which then skips generation).
2. training: "causal" (JetSpec), then "dflash", then "eagle", on the same answers. The causal head
   trains for a third of the remaining time; the other two for exactly as many steps, so all three
   see the same data and steps. Checkpoints go to OUT/<kind>/ (head.safetensors + head.json),
   resumable (OUT/<kind>/train_state.pt).
3. self-checks, each printed PASS/FAIL: held-out KL fell, rank-1 chain tau rose above 1, the
   checkpoint reloads for this target and is small, the three heads ran the same steps.
   OUT/summary.json records everything; the exit status is 1 if any check failed.
4. with --export DIR: DIR gets exactly 8 files, each < 16 MiB: summary.json, answers.safetensors
   and <kind>/head.safetensors + <kind>/head.json for the three heads (what a caller brings back).

--parallel trains the three heads side by side, one process each (a 135M target leaves most of an
H200 idle, so three processes train about as fast as one): the steps per head are fixed first, from
the measured time of a few causal steps (the slowest kind), `--contention` (how much slower a step
runs with three processes on the GPU) and the budget left; each head then runs exactly that many
steps with the same schedule and data. If the guess was too low, a head stops at the time limit
and the "same steps" check fails rather than hiding it.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent  # where the default prompt files are looked for

import torch  # noqa: E402

from jetspec.drafters.head.checkpoint import WEIGHTS, load_head  # noqa: E402
from jetspec.drafters.head.frozen_target import load_hf_target  # noqa: E402
from jetspec.drafters.head.frozen_target import hf_identity  # noqa: E402
from jetspec.drafters.head.train import TrainConfig, prepare_data, train  # noqa: E402

KINDS = ("causal", "dflash", "eagle")
PROMPTS = ("shared/data/prompts/gsm8k_train.jsonl", "../shared/data/prompts/gsm8k_train.jsonl")


def default_prompts() -> str | None:
    for rel in PROMPTS:
        if (REPO / rel).is_file():
            return str(REPO / rel)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True,
                    help="Hugging Face folder (or .gguf file) of the frozen target; 'default': the embedded SmolLM2 "
                         "that the decoder target loads (jetspec.targets.default_model)")  # fmt: skip
    ap.add_argument("--out", required=True, help="working folder (checkpoints, training states, logs, answers)")
    ap.add_argument("--export", default=None, help="copy the deliverables (8 small files) here")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget of the whole run")
    ap.add_argument("--prompts", default=default_prompts(), help="training prompts (.jsonl); never an eval set")
    ap.add_argument("--gen-fraction", type=float, default=0.3, help="share of the budget for generating answers")
    ap.add_argument("--gen-batch", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--max-prompts", type=int, default=None)
    ap.add_argument("--layers", type=int, default=2, help="head decoder layers")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per training step")
    ap.add_argument("--anchors", type=int, default=32, help="blocks per sequence")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--slack", type=float, default=1.2, help="time limit of heads 2 and 3, in units of head 1's time")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--parallel", action="store_true", help="the three heads side by side, one process each")
    ap.add_argument("--contention", type=float, default=1.6, help="--parallel: step time with 3 processes / alone")
    ap.add_argument("--steps", type=int, default=None, help="--parallel: steps per head (default: from the budget)")
    ap.add_argument("--only", choices=KINDS, help=argparse.SUPPRESS)  # a --parallel child: one head, then exit
    a = ap.parse_args(argv)
    if a.prompts is None:
        ap.error("no --prompts given and shared/data/prompts/gsm8k_train.jsonl not found")
    budget = a.minutes * 60
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    say = lambda msg: print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)  # noqa: E731

    if a.target == "default":
        from jetspec.targets.default_model import default_model_path

        target = default_model_path()  # the very folder the `decoder` target loads by default
    else:
        target = Path(a.target)
    model, tokenizer = load_hf_target(target, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    identity = hf_identity(model, target.stem if target.suffix == ".gguf" else target.name)
    say(f"target {identity['target_name']} ({identity['target_fingerprint']}) on {dev}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params")  # fmt: skip

    gen_limit = max(0.0, a.gen_fraction * budget - (time.monotonic() - T0))
    data = prepare_data(
        model, tokenizer, a.prompts, out / "answers.safetensors", identity, max_new_tokens=a.max_new_tokens,
        max_prompts=a.max_prompts, batch_size=a.gen_batch, time_limit_s=gen_limit,
    )  # fmt: skip
    say(f"data: {len(data)} answers, {data.answer_tokens} answer tokens (prompts {data.meta.get('prompts')})")

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if dev.type == "cuda":  # generating at batch 2048 leaves ~100 GB cached: give it back to the children
        torch.cuda.empty_cache()
    if a.only:  # a child of --parallel: one head for exactly --steps steps (--minutes caps it)
        r = train(model, data, out / a.only, _train_config(a, a.only, a.steps, a.minutes), identity, pad_id=pad, progress=False)
        (out / a.only / "result.json").write_text(json.dumps(r, default=str))
        return 0
    if a.parallel:
        results = side_by_side(a, target, out, model, data, identity, pad, budget, say)
    else:
        results = one_after_another(a, out, model, data, identity, pad, budget, say)

    checks = self_checks(out, results, identity, model)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    summary = {"target": identity, "data": {"answers": len(data), "answer_tokens": data.answer_tokens, **data.meta},
               "device": str(torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev),
               "seconds": round(time.monotonic() - T0, 1), "heads": results, "checks": checks,
               "command": " ".join(sys.argv)}  # fmt: skip
    for kind in results:
        log = [json.loads(line) for line in (out / kind / "log.jsonl").read_text().splitlines()]
        results[kind]["curve"] = [[r["step"], round(r["kl"], 4), round(r["tau_chain"], 3)] for r in log if "kl" in r]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    say(f"summary in {out / 'summary.json'}")
    if a.export:
        export(out, Path(a.export))
        say(f"deliverables in {a.export}")
    return 0 if all(checks.values()) else 1


def _train_config(a: argparse.Namespace, kind: str, steps: int | None, minutes: float | None) -> TrainConfig:
    return TrainConfig(
        kind=kind, steps=steps, minutes=minutes, layers=a.layers, block_size=a.block_size, batch_size=a.batch_size,
        anchors=a.anchors, lr=a.lr, seed=a.seed, save_every=500, log_every=25,
    )  # fmt: skip


def _report(say, kind: str, r: dict) -> None:
    say(f"{kind}: {r['steps']} steps in {r['seconds']} s; held-out KL {r['before'].get('eval_kl', float('nan')):.3f} -> "
        f"{r['after'].get('eval_kl', float('nan')):.3f}, chain tau {r['before'].get('eval_tau_chain', 0):.2f} -> "
        f"{r['after'].get('eval_tau_chain', 0):.2f}")  # fmt: skip


def one_after_another(a, out: Path, model, data, identity: dict, pad: int, budget: float, say) -> dict[str, dict]:
    """causal for a third of the time left, then dflash and eagle for exactly its steps."""
    per_head = max(1.0, (budget - (time.monotonic() - T0)) / len(KINDS))
    results: dict[str, dict] = {}
    steps = None
    for kind in KINDS:
        cfg = _train_config(a, kind, steps, (per_head if steps is None else a.slack * per_head) / 60)
        say(f"training {kind}: {'%.0f s' % per_head if steps is None else '%d steps' % steps}")
        results[kind] = train(model, data, out / kind, cfg, identity, pad_id=pad, progress=not a.no_progress)
        steps = steps or results[kind]["steps"]
        _report(say, kind, results[kind])
    return results


def side_by_side(a, target: Path, out: Path, model, data, identity: dict, pad: int, budget: float, say) -> dict[str, dict]:
    """Fix the steps (measured causal step time x contention vs the time left), then one process per head."""
    import subprocess

    tail_s = 60.0  # children load the target and evaluate; then the checks
    steps = a.steps
    if steps is None:
        probe = _train_config(a, "causal", 12, None)
        probe.eval_rows = a.batch_size  # one batch of held-out evaluation; the probe only times steps
        for _ in range(2):  # the first probe pays the one-time CUDA start-up; the second is timed
            shutil.rmtree(out / "probe", ignore_errors=True)
            r = train(model, data, out / "probe", probe, identity, pad_id=pad, resume=False, progress=False)
        shutil.rmtree(out / "probe", ignore_errors=True)
        per_step = r["seconds"] / r["steps"]
        left = budget - (time.monotonic() - T0) - tail_s
        steps = max(1, int(left / (per_step * a.contention)))
        say(f"probe: {per_step * 1000:.0f} ms per causal step alone; {left:.0f} s left -> {steps} steps per head")
    limit = max(1.0, budget - (time.monotonic() - T0) - tail_s / 2)
    children = {}
    for kind in KINDS:
        shutil.rmtree(out / kind, ignore_errors=True)  # no resume: every head starts from step 0 together
        (out / kind).mkdir(parents=True)
        cmd = [sys.executable, __file__, "--only", kind, "--target", str(target), "--out", str(out),
               "--prompts", a.prompts, "--steps", str(steps), "--minutes", f"{limit / 60:.3f}",
               "--layers", str(a.layers), "--block-size", str(a.block_size), "--batch-size", str(a.batch_size),
               "--anchors", str(a.anchors), "--lr", str(a.lr), "--seed", str(a.seed), "--no-progress"]  # fmt: skip
        children[kind] = subprocess.Popen(cmd, stdout=(out / kind / "stdout.log").open("w"), stderr=subprocess.STDOUT)
    say(f"training {', '.join(KINDS)} side by side: {steps} steps each, at most {limit:.0f} s")
    results = {}
    try:
        for kind, child in children.items():
            code = child.wait()
            if code != 0 or not (out / kind / "result.json").is_file():
                print((out / kind / "stdout.log").read_text()[-3000:])
                raise SystemExit(f"training {kind} failed (exit {code}); its log is above")
            results[kind] = json.loads((out / kind / "result.json").read_text())
            _report(say, kind, results[kind])
    finally:  # one head failed (or we were interrupted): the others must not train on, holding the GPU
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    return results


def export(out: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in ["summary.json", "answers.safetensors"] + [f"{k}/{f}" for k in KINDS for f in ("head.safetensors", "head.json")]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / rel, dest / rel)


def self_checks(out: Path, results: dict[str, dict], identity: dict, model) -> dict[str, bool]:
    from jetspec.core.interfaces import TargetInfo

    info = TargetInfo(
        name=identity["target_name"], architecture=model.config.model_type, vocab_size=identity["vocab_size"],
        hidden_size=identity["hidden_size"], num_layers=identity["num_target_layers"],
        num_kv_heads=identity["num_kv_heads"], head_dim=identity["head_dim"], max_positions=0,
        dtype=torch.float32, device=torch.device("cpu"), fingerprint=identity["target_fingerprint"],
    )  # fmt: skip
    checks: dict[str, bool] = {}
    for kind, r in results.items():
        before, after = r["before"], r["after"]
        checks[f"{kind}: held-out KL fell"] = bool(after and after["eval_kl"] < before["eval_kl"])
        checks[f"{kind}: chain tau > 1.05"] = bool(after and after["eval_tau_chain"] > 1.05)
        try:
            head = load_head(out / kind, info)
            checks[f"{kind}: checkpoint reloads for this target"] = head.config.kind == kind
        except Exception as e:  # report, do not crash the run
            print(f"reload of {kind} failed: {e}")
            checks[f"{kind}: checkpoint reloads for this target"] = False
        checks[f"{kind}: checkpoint < 16 MiB"] = (out / kind / WEIGHTS).stat().st_size < 16 * 2**20
    steps = {r["steps"] for r in results.values()}
    checks["same steps for every head"] = len(steps) == 1
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
