"""The `jetspec` command line.

    jetspec generate "a prompt"            # the embedded default target, best drafter available
    jetspec generate "a prompt" --compare  # also plain decoding; prints speedup and identity
    jetspec generate --config run.toml "a prompt"
    jetspec generate "a prompt" --temperature 0.8 --top-p 0.95 --seed 1   # lossless sampling
    jetspec run --config run.toml --prompts FILE.jsonl[.gz] --out OUT.jsonl [--resume]
    jetspec plugins                        # every registered implementation, by kind
    jetspec config schema | show | check FILE
    jetspec bench --config bench/configs/cpu_smoke.toml [--resume | --overwrite]

A user error prints one line (`jetspec: error: ...`) and exits with status 2; `generate --compare`
exits with status 1 when greedy speculative and plain outputs differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from .core.errors import JetSpecError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------- generate
def _pipeline_config(args: argparse.Namespace):
    from .core.config import PipelineConfig, read_config_file

    data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    gen = data.setdefault("generation", {})
    for key in ("max_new_tokens", "budget"):
        if getattr(args, key) is not None:
            gen[key] = getattr(args, key)
    if args.no_chat_template:
        gen["chat_template"] = False
    if args.drafter:
        data["drafter"] = args.drafter
    apply_sampling_flags(data, args.temperature, args.top_k, args.top_p, args.seed)
    if args.target_path:
        target = data.get("target", {"name": "decoder"})
        target = {"name": target} if isinstance(target, str) else dict(target)
        target["path"] = args.target_path
        data["target"] = target
    _device_defaults(data)
    return PipelineConfig.parse(data)


def _device_defaults(data: dict[str, Any]) -> None:
    """Where a config names neither attention nor KV cache and our decoder will run on a CUDA GPU:
    Triton attention over a paged cache, which CUDA graphs need (the library default, the
    reference attention over a dense cache, runs anywhere but eagerly)."""
    if "attention" in data or "kv_cache" in data:
        return
    target = data.get("target", "decoder")
    name, device = (target, "auto") if isinstance(target, str) else (target.get("name", "decoder"), target.get("device", "auto"))
    if name != "decoder" or device == "cpu":
        return
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        data["attention"], data["kv_cache"] = "triton", "paged"


def _build(args: argparse.Namespace, config):
    """The pipeline of `config`. The default drafter is the trained causal head; for a target with
    no trained head (none ships for it and the user chose no drafter) `generate` drafts with
    `ngram` instead and says so, on the target already loaded. A drafter the user named is never
    replaced: without its head that is a one-line error saying how to train one."""
    import jetspec
    from .core.config import Component
    from .drafters.head.checkpoint import UntrainedHeadError

    try:
        return jetspec.from_config(config)
    except UntrainedHeadError as e:
        chosen = args.drafter or (args.config and "drafter" in _read(args.config))
        if chosen or e.target is None:
            raise
        print(f"jetspec: no trained head for target {e.target.info.name!r}; drafting with ngram "
              "(train one: jetspec train-head --target ...)", file=sys.stderr)  # fmt: skip
        return jetspec.from_config(config.model_copy(update={"drafter": Component(name="ngram")}), target=e.target)


def _read(path: str) -> dict[str, Any]:
    from .core.config import read_config_file

    return read_config_file(path)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """--temperature/--top-k/--top-p/--seed (shared by `generate` and `bench`)."""
    p.add_argument("--temperature", type=float, help="sample at this temperature (selects the sampling verifier; 0: greedy)")
    p.add_argument("--top-k", type=int, dest="top_k", help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, dest="top_p", help="sample within the smallest set of mass >= top-p")
    p.add_argument("--seed", type=int, help="sampling seed (same seed, same output)")


def apply_sampling_flags(data: dict[str, Any], temperature=None, top_k=None, top_p=None, seed=None) -> None:
    """Point a config dict's verifier at the flags: temperature 0 -> `greedy`, any other
    temperature -> `sampling` with the given options (merged over a configured `sampling`);
    top-k/top-p/seed alone tune a configured `sampling` verifier and are an error otherwise."""
    extra = {k: v for k, v in (("top_k", top_k), ("top_p", top_p), ("seed", seed)) if v is not None}
    current = data.get("verifier", "greedy")
    current = {"name": current} if isinstance(current, str) else dict(current)
    if temperature == 0:
        if extra:
            raise JetSpecError(f"--{'/--'.join(k.replace('_', '-') for k in extra)} only apply when sampling; give --temperature > 0")
        data["verifier"] = "greedy"
    elif temperature is not None:
        base = current if current["name"] == "sampling" else {"name": "sampling"}
        data["verifier"] = {**base, "temperature": temperature, **extra}
    elif extra:
        if current["name"] != "sampling":
            raise JetSpecError(f"--{'/--'.join(k.replace('_', '-') for k in extra)} only apply when sampling; give --temperature > 0")
        data["verifier"] = {**current, **extra}


class _Streamer:
    """Prints text as tokens are committed (decoding the whole output each time, so multi-byte
    characters split across tokens come out whole)."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tokenizer, self.out, self.tokens, self.printed = tokenizer, out, [], ""

    def __call__(self, new: list[int]) -> None:
        self.tokens.extend(new)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text


def read_prompt(prompt: str) -> str:
    """The prompt argument, or standard input for `-` (UTF-8; anything else is one line)."""
    if prompt != "-":
        return prompt
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JetSpecError(f"the prompt on standard input is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    import jetspec

    pipe = _build(args, _pipeline_config(args))
    config = pipe.config
    prompt = read_prompt(args.prompt)
    if args.compare:  # warm both paths up (first-call allocations, kernel builds) so the timing compares decoding
        pipe.generate(prompt, max_new_tokens=2)
        pipe.generate_plain(prompt, max_new_tokens=2)
    stream = None if args.no_stream or pipe.target.tokenizer is None or args.json else _Streamer(pipe.target.tokenizer)
    try:
        result = pipe.generate(prompt, on_tokens=stream)
    except JetSpecError as e:  # what was generated before the error is not lost: streamed, or here
        partial = e.partial
        if args.json and partial is not None:
            print(json.dumps({"text": partial.text, "tokens": partial.tokens, "error": str(e), **partial.stats.as_dict()}))
        elif stream is not None and stream.tokens:
            print()
        raise
    s = result.stats
    if args.json:
        row = {"text": result.text, "tokens": result.tokens, **s.as_dict()}
    else:
        if stream is None:
            print(result.text if result.text is not None else result.tokens)
        else:
            print()
        drafter = config.drafter.name if config.generation.budget > 0 else "none"
        print(
            f"[jetspec] {s.new_tokens} new tokens · τ {s.tau:.2f} · {s.tokens_per_second:.1f} tok/s · "
            f"drafter {drafter}, budget {config.generation.budget} · {result.stopped}",
            file=sys.stderr,
        )
    if args.compare:
        plain = pipe.generate_plain(prompt)
        p = plain.stats
        identical = plain.tokens == result.tokens
        sampled = config.verifier.name == "sampling" and config.verifier.options.get("temperature", 1.0) != 0
        speedup = (p.total_seconds - p.seconds["prefill"]) / max(s.total_seconds - s.seconds["prefill"], 1e-9)
        if args.json:
            row.update(plain_tokens_per_s=p.tokens_per_second, speedup=speedup, identical=identical)
        else:
            print(
                f"[jetspec] plain decoding: {p.tokens_per_second:.1f} tok/s · speedup {speedup:.2f}x · "
                f"outputs {'identical' if identical else 'DIFFER'}"
                + (" (sampling: equal in distribution, not token for token)" if sampled else ""),
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(row))
    if args.compare and not identical and not sampled:  # greedy speculation must reproduce plain decoding
        print("jetspec: error: speculative and plain greedy outputs differ: a component is not lossless", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- run
@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from .runs import read_prompts, run_prompts

    if args.limit is not None and args.limit < 1:
        raise JetSpecError(f"--limit must be at least 1, got {args.limit}")
    prompts = read_prompts(args.prompts, args.field)[: args.limit]  # before loading a model: bad lines show at once
    pipe = _build(args, _pipeline_config(args))
    summary = run_prompts(pipe, prompts, args.out, resume=args.resume, progress=not args.no_progress)
    print(summary.line(), file=sys.stderr)
    return 0


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
    """What `config check` looks at beyond the schema: the built-in targets' model folder and the
    head drafters' checkpoint exist and can be read (plugins' own paths are theirs to check)."""
    from pathlib import Path

    from .drafters.head.checkpoint import WEIGHTS, read_config
    from .drafters.head.options import RANDOM, EagleOptions, HeadOptions
    from .targets.decoder.loading import DecoderTargetOptions
    from .targets.transformers_adapter import TransformersTargetOptions

    target = options["target"]
    if isinstance(target, (DecoderTargetOptions, TransformersTargetOptions)) and target.path is not None:
        if not Path(target.path).is_dir():
            raise JetSpecError(f"target path {target.path} is not a folder (a Hugging Face model folder or `jetspec convert` output)")
    drafter = options["drafter"]
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
    from .drafters.head.train import main as train_main

    return train_main(args.rest, formatter_class=DefaultsHelp)  # its own options (`jetspec train-head --help`)


# ---------------------------------------------------------------------------- main
class DefaultsHelp(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (None, a flag's
    False: the help text says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS or action.help is None:
            return action.help
        return super()._get_help_string(action)


GENERATE_DEVICE = """\
device: the target's `device = "auto"` (CUDA when available, else CPU); on a CUDA GPU with Triton,
and unless the config names them, attention "triton" over a "paged" KV cache (CUDA graphs),
otherwise the library defaults: attention "torch" over a "dense" KV cache.
A flag overrides the config file; a flag left out keeps the config's value or the default shown."""


def _generate_defaults() -> dict[str, Any]:
    """What `jetspec generate` uses where neither a flag nor the config says: the config's defaults."""
    from .core.config import GenerationConfig, PipelineConfig

    gen = GenerationConfig()
    return {"drafter": PipelineConfig().drafter.name, "budget": gen.budget, "max_new_tokens": gen.max_new_tokens}


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate text (default: embedded SmolLM2, best drafter available)",
                       description="Generate text by lossless speculative decoding.", epilog=GENERATE_DEVICE,
                       formatter_class=DefaultsHelp)  # fmt: skip
    g.add_argument("prompt", help="the prompt text, or - to read it from standard input")
    add_pipeline_flags(g)
    g.add_argument("--compare", action="store_true", help="also run plain decoding; print speedup and identity")
    g.add_argument("--no-stream", action="store_true", help="print the answer once it is complete instead of token by token")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def add_pipeline_flags(g: argparse.ArgumentParser) -> None:
    """--config and the flags that override it (shared by `generate` and `run`: `_pipeline_config`)."""
    d = _generate_defaults()
    g.add_argument("--config", help="pipeline config (TOML, YAML or JSON; default: none, the built-in defaults)")
    g.add_argument("--max-new-tokens", type=int, dest="max_new_tokens",
                   help=f"tokens to generate at most (default: {d['max_new_tokens']})")
    g.add_argument("--budget", type=int, help=f"draft nodes verified per round, 0: plain decoding (default: {d['budget']})")
    g.add_argument("--drafter", help=f"drafter name, see `jetspec plugins` (default: {d['drafter']}; "
                                     "ngram for a target with no trained head)")  # fmt: skip
    g.add_argument("--target-path", help="a Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--no-chat-template", action="store_true",
                   help="give the prompt to the model as it is, not wrapped in the tokenizer's chat template")
    add_sampling_flags(g)


def _run_parser(sub) -> None:
    from .runs import CHAT_FIELDS, ID_FIELDS, PROMPT_FIELDS

    r = sub.add_parser("run", help="answer every prompt of a JSONL file into a JSONL of rows (resumable)",
                       description="Generate an answer to each prompt of a JSONL file, one at a time, appending one "
                                   "row per prompt to OUT: id, text, tokens, tau, seconds, stopped (and error where "
                                   "a generation failed; the run goes on).",
                       epilog=f"prompt: --field, else the first of {', '.join(PROMPT_FIELDS)}, else the first user turn "
                              f"of {', '.join(CHAT_FIELDS)};\nid: the first of {', '.join(ID_FIELDS)}, else the line number. "
                              "A bad line is reported with its number and skipped.\n" + GENERATE_DEVICE,
                       formatter_class=DefaultsHelp)  # fmt: skip
    r.add_argument("--prompts", required=True, help="the prompts: JSON lines, gzip-compressed if the name ends in .gz")
    r.add_argument("--out", required=True, help="the output JSONL (rows appended as each prompt finishes)")
    r.add_argument("--resume", action="store_true", help="continue OUT: skip ids it already answers (without it, a non-empty OUT is an error)")
    r.add_argument("--field", help="the input field holding the prompt (a string, or chat turns)")
    r.add_argument("--limit", type=int, help="answer only the first N usable prompts of the file")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pipeline_flags(r)


def parser() -> argparse.ArgumentParser:
    d = _generate_defaults()
    p = argparse.ArgumentParser(
        prog="jetspec", description="Lossless speculative decoding.", formatter_class=DefaultsHelp,
        epilog=f"generate's defaults: target the embedded SmolLM2-135M-Instruct, drafter {d['drafter']},\n"
               f"budget {d['budget']}, max new tokens {d['max_new_tokens']}, device auto (CUDA when available).\n"
               "`jetspec COMMAND --help` shows a command's options and their defaults.",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _run_parser(sub)

    sub.add_parser("plugins", help="list registered implementations by kind", formatter_class=DefaultsHelp)

    cv = sub.add_parser("convert", help="convert a GGUF file into a Hugging Face folder (config, safetensors, tokenizer)",
                        formatter_class=DefaultsHelp)
    cv.add_argument("gguf", help="the GGUF file to read")
    cv.add_argument("out_dir", help="the folder to write")
    cv.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype of the saved weights")

    th = sub.add_parser("train-head", add_help=False, help="train a draft head on a frozen target (self-distillation)")
    th.add_argument("rest", nargs=argparse.REMAINDER)

    b = sub.add_parser("bench", help="benchmark pipelines against plain decoding and transformers peers", formatter_class=DefaultsHelp)
    from .bench.cli import add_arguments

    add_arguments(b)

    c = sub.add_parser("config", help="config schema / show / check", formatter_class=DefaultsHelp)
    c.add_argument("action", choices=["schema", "show", "check"],
                   help="schema: the JSON schema of a config; show: FILE (or no file) with every default filled in; check: validate FILE")
    c.add_argument("file", nargs="?", help="the config file (for show and check)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-head"]:  # its options belong to the trainer's own parser
        args = argparse.Namespace(command="train-head", rest=argv[1:])
    else:
        args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except JetSpecError as e:
        print(f"jetspec: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `jetspec config schema | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("\njetspec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
