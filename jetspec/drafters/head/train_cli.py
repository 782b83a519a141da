"""`jetspec train-head`: the command line of `train.py`, and accumulating runs (`--resume DIR`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...core.errors import InputError
from .objective import LOSSES
from .train import TrainConfig, train_head


RUN_FILE = "run.json"  # a run's settings, written by its first call, read by `--resume DIR`
CALL_OPTIONS = ("minutes", "steps", "eval_every", "device", "no_progress")  # what a resumed call may change
PER_CALL = ("resume", "minutes", "device", "no_progress")  # not part of a run's settings


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of layer indices, not {text!r}") from None


def _parser(formatter_class: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="jetspec train-head", description=train_head.__doc__, formatter_class=formatter_class,
                                 epilog="An accumulating run: the first call names the target, the data and the settings "
                                        "(--out DIR); every later call is `jetspec train-head --resume DIR --minutes M`, "
                                        "which continues from the weights, optimizer, data cursor and RNG saved in DIR "
                                        f"(it may change only {', '.join('--' + o.replace('_', '-') for o in CALL_OPTIONS)}).")  # fmt: skip
    ap.add_argument("--target", help="Hugging Face folder (or .gguf file) of the frozen target; 'default': the embedded SmolLM2")
    ap.add_argument("--corpus", default=None, help="a corpus folder made by `jetspec make-corpus`")
    ap.add_argument("--prompts", default=None, help="training prompts, .jsonl(.gz), answered by the target first (instead of --corpus)")
    ap.add_argument("--out", default=None, help="output folder (checkpoint, training state, log, curves)")
    ap.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR with its own settings")
    ap.add_argument("--init", default=None, metavar="HEAD_DIR",
                    help="a new run starting from the weights of the head in HEAD_DIR (same settings and target; fresh optimizer and schedule)")
    ap.add_argument("--kind", default=d.kind, choices=["causal", "dflash", "eagle"], help="which head to train")
    ap.add_argument("--steps", type=int, default=d.steps, help="the run's total optimizer steps (the schedule's horizon)")
    ap.add_argument("--minutes", type=float, default=None, help="this call's time budget; it saves and stops (default: none)")
    ap.add_argument("--data", default=None, help="with --prompts: answers file to reuse/create (default: OUT/answers.safetensors)")
    ap.add_argument("--layers", type=int, default=d.layers, help="head decoder layers")
    ap.add_argument("--block-size", type=int, default=d.block_size, help="inputs per block, the draft depth trained")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    ap.add_argument("--anchors", type=int, default=d.anchors, help="blocks per sequence")
    ap.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    ap.add_argument("--max-len", type=int, default=d.max_len, help="tokens per training sequence (longer rows are cut)")
    ap.add_argument("--eval-rows", type=int, default=d.eval_rows, help="held-out rows validated")
    ap.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validations (0: start and end of a call)")
    ap.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints (and at every stop)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="with --prompts: length of each self-distilled answer")
    ap.add_argument("--max-prompts", type=int, default=None, help="with --prompts: use at most this many prompts (default: all)")
    ap.add_argument("--seed", type=int, default=d.seed, help="random seed")
    ap.add_argument("--loss", default=d.loss, choices=list(LOSSES), help="kl: forward KL to the target; ce: cross-entropy on its argmax")
    ap.add_argument("--gamma", type=float, default=d.gamma, help="per-depth loss weight exp(-(d-1)/gamma); 0: uniform")
    ap.add_argument("--intermediate-size", type=int, default=None, help="head MLP width (default: 8/3 of the target's hidden size)")
    ap.add_argument("--target-layers", type=_layers, default=None,
                    help="target layers whose hidden states are fused, e.g. 1,15,27 (default: evenly spaced, one per head layer)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None, formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> int:
    """`jetspec train-head`; the CLI passes its help formatter (which shows the defaults)."""
    ap = _parser(formatter_class)
    a = vars(ap.parse_args(argv))
    if a["resume"]:
        run_file = Path(a["resume"]) / RUN_FILE
        if not run_file.is_file():
            raise InputError(f"--resume {a['resume']}: no {RUN_FILE} there; start a run with --out DIR (and --target, --corpus or --prompts)")
        saved = json.loads(run_file.read_text())
        for key, value in a.items():
            if key not in CALL_OPTIONS + ("resume",) and value != ap.get_default(key) and value != saved.get(key):
                raise InputError(f"--resume continues {a['resume']} with its own settings: --{key.replace('_', '-')} cannot change "
                                 f"(it is {saved.get(key)!r}); a call may change {', '.join('--' + o.replace('_', '-') for o in CALL_OPTIONS)}")  # fmt: skip
        a = {**saved, **{k: a[k] for k in CALL_OPTIONS if a[k] != ap.get_default(k)}, "out": a["resume"]}
    else:
        missing = [f"--{k}" for k in ("target", "out") if not a[k]]
        if missing or bool(a["corpus"]) == bool(a["prompts"]):
            raise InputError(f"train-head needs {' and '.join(missing) or 'its data'}{' and' if missing else ':'} exactly one of --corpus DIR "
                             "or --prompts FILE (or --resume DIR to continue a run)")  # fmt: skip
        if a["target"] == "default":
            from ...targets.default_model import default_model_path

            a["target"] = str(default_model_path())
        Path(a["out"]).mkdir(parents=True, exist_ok=True)
        if not (Path(a["out"]) / RUN_FILE).is_file():
            (Path(a["out"]) / RUN_FILE).write_text(json.dumps({k: v for k, v in a.items() if k not in PER_CALL}, indent=1) + "\n")
    summary = train_head(
        a["target"], a["prompts"], a["out"], a["kind"], a["steps"], corpus=a["corpus"], data_path=a["data"],
        max_new_tokens=a["max_new_tokens"], max_prompts=a["max_prompts"], device=a.get("device"), progress=not a.get("no_progress"),
        minutes=a.get("minutes"), layers=a["layers"], block_size=a["block_size"], batch_size=a["batch_size"],
        anchors=a["anchors"], lr=a["lr"], seed=a["seed"], max_len=a["max_len"], eval_rows=a["eval_rows"],
        eval_every=a.get("eval_every") or 0, save_every=a["save_every"], loss=a.get("loss", "kl"),
        gamma=a.get("gamma", 0.0), intermediate_size=a.get("intermediate_size"), target_layers=a.get("target_layers"),
        init=a.get("init"),
    )  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
