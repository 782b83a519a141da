"""`jetspec generate` and `jetspec run`: their flags, the pipeline config those flags make, and
what they print. `jetspec.cli` registers the commands and owns `main`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .core.config import DEVICE_POLICY
from .core.errors import JetSpecError


def _pipeline_config(args: argparse.Namespace):
    from .core.config import PipelineConfig, read_config_file

    data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    gen = data.setdefault("generation", {})
    for key in ("max_new_tokens", "budget", "batch_size", "max_verify_rows"):
        if getattr(args, key, None) is not None:
            gen[key] = getattr(args, key)
    if args.no_chat_template:
        gen["chat_template"] = False
    if args.drafter:
        data["drafter"] = args.drafter
    apply_sampling_flags(data, args.temperature, args.top_k, args.top_p, args.seed)
    for flag, option in ((args.target_path, "path"), (args.tensor_parallel, "tensor_parallel")):
        if flag is not None:
            target = data.get("target", {"name": "decoder"})
            target = {"name": target} if isinstance(target, str) else dict(target)
            target[option] = flag
            data["target"] = target
    return PipelineConfig.parse(data)  # the device policy is the config's own (`core.config.device_policy`)


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

    def __init__(self, tokenizer, out=None):  # None: sys.stdout when made (a quiet rank's is /dev/null)
        self.tokenizer, self.out, self.tokens, self.printed = tokenizer, out or sys.stdout, [], ""

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



def cmd_generate(args: argparse.Namespace) -> int:
    from .core.distributed import current

    config = _pipeline_config(args)
    ranks = current()
    if ranks is not None and config.target.options.get("tensor_parallel", 1) != ranks.world:
        raise JetSpecError(f"generate answers one prompt: over {ranks.world} ranks (torchrun) the target needs "
                           f"tensor_parallel = {ranks.world} (--tensor-parallel {ranks.world}); to spread many prompts "
                           "over the ranks, use jetspec run")
    pipe = _build(args, config)
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


def cmd_run(args: argparse.Namespace) -> int:
    from .core.distributed import RankLost, current
    from .runs import check_resume, read_prompts, run_prompts

    if args.limit is not None and args.limit < 1:
        raise JetSpecError(f"--limit must be at least 1, got {args.limit}")
    check_resume(args.resume, args.retry_errors)  # before a model loads
    prompts = read_prompts(args.prompts, args.field)[: args.limit]  # before loading a model: bad lines show at once
    pipe = _build(args, _pipeline_config(args))
    ranks = current()
    try:
        summary = run_prompts(pipe, prompts, args.out, resume=args.resume, progress=not args.no_progress, ranks=ranks,
                              retry_errors=args.retry_errors)
    except RankLost as e:
        raise RankLost(f"{e}; every row written so far is in {args.out}: run again with --resume to answer the rest") from None
    print(summary.line() + (f" · {ranks.world} ranks" if ranks else ""), file=sys.stderr)
    return 0

GENERATE_DEVICE = DEVICE_POLICY + """
A flag overrides the config file; a flag left out keeps the config's value or the default shown."""


def generate_defaults() -> dict[str, Any]:
    """What `jetspec generate` uses where neither a flag nor the config says: the config's defaults."""
    from .core.config import GenerationConfig, PipelineConfig

    gen = GenerationConfig()
    return {"drafter": PipelineConfig().drafter.name, "budget": gen.budget, "max_new_tokens": gen.max_new_tokens}


def generate_parser(sub, formatter_class: type[argparse.HelpFormatter]) -> None:
    g = sub.add_parser("generate", help="generate text (default: embedded SmolLM2, best drafter available)",
                       description="Generate text by lossless speculative decoding.", epilog=GENERATE_DEVICE,
                       formatter_class=formatter_class)  # fmt: skip
    g.add_argument("prompt", help="the prompt text, or - to read it from standard input")
    add_pipeline_flags(g)
    g.add_argument("--compare", action="store_true", help="also run plain decoding; print speedup and identity")
    g.add_argument("--no-stream", action="store_true", help="print the answer once it is complete instead of token by token")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def add_pipeline_flags(g: argparse.ArgumentParser) -> None:
    """--config and the flags that override it (shared by `generate` and `run`: `_pipeline_config`)."""
    d = generate_defaults()
    g.add_argument("--config", help="pipeline config (TOML, YAML or JSON; default: none, the built-in defaults)")
    g.add_argument("--max-new-tokens", type=int, dest="max_new_tokens",
                   help=f"tokens to generate at most (default: {d['max_new_tokens']})")
    g.add_argument("--budget", type=int, help=f"draft nodes verified per round, 0: plain decoding (default: {d['budget']})")
    g.add_argument("--drafter", help=f"drafter name, see `jetspec plugins` (default: {d['drafter']}; "
                                     "ngram for a target with no trained head)")  # fmt: skip
    g.add_argument("--target-path", help="a Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--tensor-parallel", type=int, dest="tensor_parallel",
                   help="split the target over this many ranks (start them with torchrun --nproc-per-node N; "
                        "the decoder target's tensor_parallel)")
    g.add_argument("--no-chat-template", action="store_true",
                   help="give the prompt to the model as it is, not wrapped in the tokenizer's chat template")
    add_sampling_flags(g)


def run_parser(sub, formatter_class: type[argparse.HelpFormatter]) -> None:
    from .runs import CHAT_FIELDS, ID_FIELDS, PROMPT_FIELDS

    r = sub.add_parser("run", help="answer every prompt of a JSONL file into a JSONL of rows (resumable)",
                       description="Generate an answer to each prompt of a JSONL file (one at a time, or --batch-size at once), appending one "
                                   "row per prompt to OUT: id, text, tokens, tau, seconds, stopped (and error where "
                                   "a generation failed; the run goes on).",
                       epilog=f"prompt: --field, else the first of {', '.join(PROMPT_FIELDS)}, else the first user turn "
                              f"of {', '.join(CHAT_FIELDS)};\nid: the first of {', '.join(ID_FIELDS)}, else the line number. "
                              "A bad line is reported with its number and skipped.\n" + GENERATE_DEVICE,
                       formatter_class=formatter_class)  # fmt: skip
    r.add_argument("--prompts", required=True, help="the prompts: JSON lines, gzip-compressed if the name ends in .gz")
    r.add_argument("--out", required=True, help="the output JSONL (rows appended as each prompt finishes)")
    r.add_argument("--resume", action="store_true", help="continue OUT: skip ids it already answers (without it, a non-empty OUT is an error)")
    r.add_argument("--retry-errors", action="store_true", dest="retry_errors",
                   help="with --resume: take OUT's error rows out and run their prompts again (each still ends with one row)")
    r.add_argument("--field", help="the input field holding the prompt (a string, or chat turns)")
    r.add_argument("--limit", type=int, help="answer only the first N usable prompts of the file")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--batch-size", type=int, dest="batch_size",
                   help="prompts decoded at once (continuous batching; rows come as prompts finish; default: the "
                        "config's generation.batch_size, else 1; > 1 needs target 'decoder' with attention 'torch' or 'triton' "
                        "(kv_cache 'paged'; exact = true: 'triton'))")
    r.add_argument("--max-verify-rows", type=int, dest="max_verify_rows",
                   help="cap on the draft-tree rows verified per step over all sequences of a batch (default: none)")
    add_pipeline_flags(r)

