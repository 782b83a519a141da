"""The `jetspec` command line.

    jetspec generate "a prompt"            # the embedded default target, best drafter available
    jetspec generate "a prompt" --compare  # also plain decoding; prints speedup and identity
    jetspec generate --config run.toml "a prompt"
    jetspec generate "a prompt" --temperature 0.8 --top-p 0.95 --seed 1   # lossless sampling
    jetspec run --config run.toml --prompts FILE.jsonl[.gz] --out OUT.jsonl [--resume]
    jetspec fit-lookup --corpus DIR --out HEAD_DIR/lookup.json   # prompt lookup's acceptance rates
    jetspec calibrate-head --head HEAD_DIR --corpus DIR         # a parallel head's acceptance rates
    jetspec plugins                        # every registered implementation, by kind
    jetspec config schema | show | check FILE
    jetspec bench --config bench/configs/cpu_smoke.toml [--resume | --overwrite]
    torchrun --nproc-per-node N -m jetspec.cli generate|run|bench ...   # several ranks (`ranked`)

A user error prints one line (`jetspec: error: ...`) and exits with status 2; `generate --compare`
exits with status 1 when greedy speculative and plain outputs differ.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable

from .cli_generate import cmd_generate, cmd_run, generate_defaults, generate_parser, run_parser
from .core.distributed import DEFAULT_TIMEOUT_S, RankLost
from .core.errors import JetSpecError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


command("generate")(cmd_generate)  # flags -> config -> pipeline: jetspec/cli_generate.py
command("run")(cmd_run)


# ---------------------------------------------------------------------------- plugins
@command("plugins")
def cmd_plugins(args: argparse.Namespace) -> int:
    import jetspec

    reg = jetspec.default_registry()
    for kind, impls in reg.implementations.items():
        print(f"{kind}:")
        for name in sorted(impls):
            impl = impls[name]
            print(f"  {name:<14} [{impl.plugin}] {impl.summary}")
    for problem in reg.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- config
@command("config")
def cmd_config(args: argparse.Namespace) -> int:
    import jetspec
    from .core.config import PipelineConfig, config_schema

    reg = jetspec.default_registry()
    if args.action == "schema":
        print(json.dumps(config_schema(reg), indent=2))
    elif args.action == "show":
        cfg = PipelineConfig.load(args.file) if args.file else PipelineConfig()
        print(json.dumps(cfg.model_dump(), indent=2))
    elif args.action == "check":
        if not args.file:
            raise JetSpecError("config check needs a FILE")
        cfg = PipelineConfig.load(args.file)
        check_files(cfg.validate_with(reg))
        print(f"{args.file}: ok")
    return 0


def check_files(options: dict[str, Any]) -> None:
    """What `config check` looks at beyond the schema: the built-in targets' model folder, the
    head drafters' checkpoint and the n-gram drafter's calibration file exist and can be read
    (plugins' own paths are theirs to check)."""
    from pathlib import Path

    from .drafters.head.checkpoint import WEIGHTS, read_config
    from .drafters.head.options import RANDOM, EagleOptions, HeadOptions
    from .drafters.lookup_calibration import LookupCalibration
    from .drafters.ngram import NgramOptions
    from .targets.decoder.loading import DecoderTargetOptions
    from .targets.transformers_adapter import TransformersTargetOptions

    target = options["target"]
    if isinstance(target, (DecoderTargetOptions, TransformersTargetOptions)) and target.path is not None:
        if not Path(target.path).is_dir():
            raise JetSpecError(f"target path {target.path} is not a folder (a Hugging Face model folder or `jetspec convert` output)")
    drafter = options["drafter"]
    if isinstance(drafter, NgramOptions) and drafter.calibration is not None:
        LookupCalibration.load(drafter.calibration)  # one-line InputError if it is missing or malformed
    if isinstance(drafter, (HeadOptions, EagleOptions)) and drafter.checkpoint not in (None, RANDOM):
        read_config(drafter.checkpoint)  # one-line CheckpointError if head.json is missing or unreadable
        if not (Path(drafter.checkpoint) / WEIGHTS).is_file():
            raise JetSpecError(f"head checkpoint {drafter.checkpoint} has no {WEIGHTS}")


# ---------------------------------------------------------------------------- bench
@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run_from_args

    return run_from_args(args)


# ---------------------------------------------------------------------------- convert, train-head
@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    from .targets.gguf_import import convert_gguf

    out = convert_gguf(args.gguf, args.out_dir, progress=True, dtype=args.dtype)
    print(out)
    return 0


@command("train-head")
def cmd_train_head(args: argparse.Namespace) -> int:
    from .drafters.head.train_cli import main as train_main

    return train_main(args.rest, formatter_class=DefaultsHelp)  # its own options (`jetspec train-head --help`)


@command("make-corpus")
def cmd_make_corpus(args: argparse.Namespace) -> int:
    from .drafters.head.make_corpus import main as corpus_main

    return corpus_main(args.rest, formatter_class=DefaultsHelp)  # its own options (`jetspec make-corpus --help`)


@command("fit-lookup")
def cmd_fit_lookup(args: argparse.Namespace) -> int:
    from .drafters.lookup_fit import main as fit_main

    return fit_main(args.rest, formatter_class=DefaultsHelp)  # its own options (`jetspec fit-lookup --help`)


@command("calibrate-head")
def cmd_calibrate_head(args: argparse.Namespace) -> int:
    from .drafters.head.calibration_fit import main as calibrate_main

    return calibrate_main(args.rest, formatter_class=DefaultsHelp)  # its own options (`jetspec calibrate-head --help`)


# ---------------------------------------------------------------------------- main
class DefaultsHelp(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (None, a flag's
    False: the help text says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS or action.help is None:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    d = generate_defaults()
    p = argparse.ArgumentParser(
        prog="jetspec", description="Lossless speculative decoding.", formatter_class=DefaultsHelp,
        epilog=f"generate's defaults: target the embedded SmolLM2-135M-Instruct, drafter {d['drafter']},\n"
               f"budget {d['budget']}, max new tokens {d['max_new_tokens']}, device auto (CUDA when available).\n"
               "`jetspec COMMAND --help` shows a command's options and their defaults.",
    )  # fmt: skip
    p.add_argument("--rank-timeout", type=float, default=DEFAULT_TIMEOUT_S, dest="rank_timeout",
                   help="under torchrun: seconds a rank waits for the others before the run ends with one line")
    sub = p.add_subparsers(dest="command", required=True)
    generate_parser(sub, DefaultsHelp)
    run_parser(sub, DefaultsHelp)

    sub.add_parser("plugins", help="list registered implementations by kind", formatter_class=DefaultsHelp)

    cv = sub.add_parser("convert", help="convert a GGUF file into a Hugging Face folder (config, safetensors, tokenizer)",
                        formatter_class=DefaultsHelp)
    cv.add_argument("gguf", help="the GGUF file to read")
    cv.add_argument("out_dir", help="the folder to write")
    cv.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype of the saved weights")

    th = sub.add_parser("train-head", add_help=False, help="train a draft head on a frozen target (self-distillation)")
    th.add_argument("rest", nargs=argparse.REMAINDER)
    mc = sub.add_parser("make-corpus", add_help=False, help="the target writes a training corpus for draft heads (Magpie + GSM8K train)")
    mc.add_argument("rest", nargs=argparse.REMAINDER)
    fl = sub.add_parser("fit-lookup", add_help=False, help="measure prompt lookup's acceptance rates on a corpus (lookup.json)")
    fl.add_argument("rest", nargs=argparse.REMAINDER)
    ch = sub.add_parser("calibrate-head", add_help=False, help="measure a parallel head's acceptance rates on held-out answers (head_rates.json)")
    ch.add_argument("rest", nargs=argparse.REMAINDER)

    b = sub.add_parser("bench", help="benchmark pipelines against plain decoding and transformers peers", formatter_class=DefaultsHelp)
    from .bench.cli import add_arguments

    add_arguments(b)

    c = sub.add_parser("config", help="config schema / show / check", formatter_class=DefaultsHelp)
    c.add_argument("action", choices=["schema", "show", "check"],
                   help="schema: the JSON schema of a config; show: FILE (or no file) with every default filled in; check: validate FILE")
    c.add_argument("file", nargs="?", help="the config file (for show and check)")
    return p


DISTRIBUTED = ("generate", "run", "bench")  # the commands that may run as several ranks under torchrun


@contextlib.contextmanager
def ranked(args: argparse.Namespace):
    """The process group of a command started by `torchrun --nproc-per-node N` (made and destroyed
    here, nowhere else), and only rank 0 printing: the other ranks' stdout and stderr go nowhere
    (their errors still print, prefixed with their rank). One process: nothing happens."""
    from .core.distributed import process_group

    if args.command not in DISTRIBUTED:
        yield None
        return
    with process_group(timeout_s=args.rank_timeout) as ranks:
        if ranks is None or ranks.leads:
            yield ranks
            return
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            yield ranks


class _prefixed:
    """A stream whose lines start with `[rank r] ` (a non-leading rank's error line)."""

    def __init__(self, stream, rank: int):
        self.stream, self.prefix = stream, f"[rank {rank}] "

    def write(self, text: str) -> int:
        return self.stream.write(text if not text.strip() else self.prefix + text)

    def flush(self) -> None:
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train-head"], ["make-corpus"], ["fit-lookup"], ["calibrate-head"]):  # their options belong to their own parsers
        args = argparse.Namespace(command=argv[0], rest=argv[1:])
    else:
        args = parser().parse_args(argv)
    err = sys.stderr
    try:
        with ranked(args) as ranks:
            if ranks is not None and not ranks.leads:
                err = _prefixed(err, ranks.rank)
            return COMMANDS[args.command](args)
    except RankLost as e:  # the group is broken: say so and leave now (rows are on disk; gloo's threads would abort)
        print(f"jetspec: error: {e}", file=err)
        err.flush()
        sys.stdout.flush()
        os._exit(2)
    except JetSpecError as e:
        print(f"jetspec: error: {e}", file=err)
        return 2
    except BrokenPipeError:  # e.g. `jetspec config schema | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("\njetspec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
