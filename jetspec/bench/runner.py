"""`run_bench`: every prompt through plain decoding, each pipeline and each peer, in one process.

    plan     : prompts, pipelines, registry checks, capacity  (`plan.py`: one line, no model loaded)
    per engine (KV cache + attention choice), the target loaded once:
      warm up each pipeline and peer (untimed)
      per prompt (round-robin over datasets):
        plain decoding                      -> `plain` row: the baseline of this prompt, this run
        each pipeline                       -> `spec` row: τ, speed, speedup, identity / mismatch
        each peer                           -> `peer` row
    finish   : summary rows, RESULTS.md section, plots

Rows are appended as they finish; `resume=True` skips prompts whose rows are done.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.builder import build_pipeline
from ..core.config import Component
from ..core.distributed import Ranks, barrier, patient_group
from ..core.errors import CapacityError, ConfigError
from ..core.interfaces import observed_layers
from ..core.pipeline import Pipeline
from ..core.registry import Registry
from .config import BenchConfig, BenchPipeline
from .datasets import Prompt
from .faithfulness import ProposalRecorder, measure_faithfulness, token_logprobs
from .mismatch import describe_mismatch
from .peers import Peers, row_name
from .plan import Plan, plan_bench
from .plots import write_plots
from .report import summarize, write_results_md
from .replay import SharedProposals, context_hidden, replay
from .rows import append_row, done_keys, latest_prompt_rows, read_rows, replace_summaries, run_row
from .timing import timed


@dataclass
class BenchOutcome:
    results: Path
    summaries: list[dict[str, Any]]
    markdown: Path
    plots: list[Path]
    stopped_early: bool = False
    errors: list[str] = field(default_factory=list)


def _registry_with_target(registry: Registry, name: str, target: Any) -> Registry:
    """The registry, with target `name` returning the already loaded `target` (same options and
    capabilities), so every pipeline of an engine shares one copy of the weights."""
    impl = replace(registry.get("target", name), factory=lambda options, attention: target)
    impls = {**registry.implementations, "target": {**registry.implementations["target"], name: impl}}
    return Registry(implementations=impls, problems=registry.problems, plugins=registry.plugins)


class BenchRun:
    def __init__(
        self, plan: Plan, registry: Registry, command: str, progress: bool, max_minutes: float | None,
        shard: tuple[int, int] | None = None, writes: bool = True,
    ):  # fmt: skip
        self.plan, self.registry, self.config = plan, registry, plan.config
        self.shard = shard
        self.writes = writes  # False: a tensor-parallel rank other than 0 (decodes in lockstep, writes nothing)
        self.run = run_row(command, {})
        self.run_written = False
        self.progress = progress
        minutes = max_minutes if max_minutes is not None else self.config.max_minutes
        self.deadline = time.monotonic() + minutes * 60 if minutes else None
        self.done = done_keys(read_rows(plan.results))
        self.errors: list[str] = []
        self.stopped_early = False
        self.memos: dict[str, dict] = {}  # replay: drafter configuration -> proposals shared by its budgets
        self.per_prompt: dict = {}  # what every pipeline of the current prompt can share
        rank: dict[str, int] = {}
        self.rank = {}  # (dataset, prompt id) -> position within its dataset's subset
        for p in plan.prompts:
            self.rank[(p.dataset, p.id)] = rank[p.dataset] = rank.get(p.dataset, -1) + 1

    def is_done(self, prompt: Prompt, name: str) -> bool:
        return (prompt.dataset, prompt.id, name, self.plan.keys[name]) in self.done

    def todo(self, prompt: Prompt, bps: list[BenchPipeline], peers: list[str]) -> tuple[list[BenchPipeline], list[str]]:
        count = self.config.peers.count
        peers = [p for p in peers if count is None or self.rank[(prompt.dataset, prompt.id)] < count]
        if not self.writes:  # peers make no collective: rank 0 alone runs them
            peers = []
        return [bp for bp in bps if not self.is_done(prompt, bp.name)], [p for p in peers if not self.is_done(prompt, row_name(p))]

    def write(self, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        if not self.run_written:
            append_row(self.plan.results, self.run)
            self.run_written = True
        append_row(self.plan.results, {**row, "run": self.run["run"]})

    # ------------------------------------------------------------------ the loop
    def execute(self) -> None:
        from tqdm import tqdm

        all_peers = list(self.config.peers.include)
        work = {}
        prompts = self.plan.prompts
        if self.shard is not None:  # shard i of n: every n-th prompt from the i-th (processes side by side)
            i, n = self.shard
            prompts = prompts[i::n]
        for gi, (engine, bps) in enumerate(self.plan.groups.items()):
            work[engine] = [(p, *self.todo(p, bps, all_peers if gi == 0 else [])) for p in prompts]
            work[engine] = [(p, b, q) for p, b, q in work[engine] if b or q]
        total = sum(1 + len(b) + len(q) for items in work.values() for _, b, q in items)
        bar = tqdm(total=total, desc=self.config.name, unit="gen", disable=not self.progress, dynamic_ncols=True, file=sys.stderr)
        try:
            for gi, (engine, items) in enumerate(work.items()):
                if items and not self.stopped_early:
                    self.engine(engine, items, all_peers if gi == 0 else [], bar)
        finally:
            bar.close()

    def engine(self, engine: tuple[str, str], items: list, peer_names: list[str], bar: Any) -> None:
        plan, config = self.plan, self.config
        bps = plan.groups[engine]
        # the baseline: plain greedy decoding (greedy verifier, no drafter) with this engine's cache and attention
        plain_config = bps[0].config.model_copy(update={
            "verifier": Component(name="greedy"),
            "generation": bps[0].config.generation.model_copy(update={"budget": 0}),
        })
        first = build_pipeline(plain_config, self.registry)
        shared = _registry_with_target(self.registry, config.target.name, first.target)
        pipes = {bp.name: build_pipeline(bp.config, shared) for bp in bps}
        self.memos = {}
        if config.replay:
            for bp in bps:
                memo = self.memos.setdefault(bp.config.drafter.model_dump_json(), {})
                pipes[bp.name].drafter = SharedProposals(pipes[bp.name].drafter, memo)
        for name in plan.faithfulness & set(pipes):
            pipes[name].drafter = ProposalRecorder(pipes[name].drafter)
        ids = {}
        for prompt, todo_bps, _ in items:  # encode everything, and check it fits, before decoding anything
            ids[prompt] = first.encode(prompt.text, chat_template=prompt.chat_template)
            for bp in todo_bps:
                need = len(ids[prompt]) + config.max_new_tokens + bp.config.generation.budget
                if need > first.target.info.max_positions:
                    raise CapacityError(
                        f"dataset '{prompt.dataset}' prompt {prompt.id} ({len(ids[prompt])} tokens) + max_new_tokens "
                        f"({config.max_new_tokens}) + budget ({bp.config.generation.budget}) needs {need} positions; "
                        f"the target allows {first.target.info.max_positions}"
                    )
        peers = Peers(config.peers.model_copy(update={"include": peer_names}), config.target, first.target)
        try:
            self._decode(engine, items, bps, pipes, first, peers, ids, bar)
        finally:
            peers.close()
        del pipes, first, peers, shared
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _decode(self, engine: tuple[str, str], items: list, bps: list, pipes: dict, first: Any, peers: Peers,
                ids: dict, bar: Any) -> None:
        """Every prompt of `items` through plain decoding, its pipelines and its peers, a row each."""
        plan, config = self.plan, self.config
        self.run["skipped_peers"].update(peers.skipped)
        if config.warmup_tokens:
            warm = ids[items[0][0]]
            first.generate_plain(warm, max_new_tokens=config.warmup_tokens)
            for bp in bps:
                pipes[bp.name].generate(warm, max_new_tokens=config.warmup_tokens)
            for peer in peers.active:
                peers.generate(peer, warm, config.warmup_tokens)
        device = first.target.info.device
        plain_name = plan.plain_name(engine)
        for prompt, todo_bps, todo_peers in items:
            active = [q for q in todo_peers if q in peers.active]
            bar.update(len(todo_peers) - len(active))  # peers skipped for a recorded reason
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.stopped_early = True
                break
            prompt_ids = ids[prompt]
            self.per_prompt = {}  # replay: hidden states; faithfulness: the target's log-probs of plain's output
            for memo in self.memos.values():
                memo.clear()
            info = first.target.info
            base = {"dataset": prompt.dataset, "prompt_id": prompt.id, "target": config.target.name, "prompt_tokens": len(prompt_ids),
                    "dtype": str(info.dtype).removeprefix("torch."), "exact": info.exact}
            plain, plain_wall, peak = timed(lambda: first.generate_plain(prompt_ids), device)
            s = plain.stats
            self.write({
                **base, "kind": "plain", "pipeline": plain_name, "key": plan.keys[plain_name], "drafter": None,
                "budget": 0, "temperature": 0.0, "kv_cache": engine[0], "attention": engine[1],
                "new_tokens": s.new_tokens, "rounds": s.rounds, "wall_s": plain_wall, "plain_wall_s": plain_wall,
                "tokens_per_s": s.new_tokens / plain_wall, "seconds": dict(s.seconds), "peak_mem_bytes": peak,
                "stopped": plain.stopped, "identical": True, "mismatch": None,
            })
            bar.update(1)
            for bp in todo_bps:
                bar.set_postfix_str(f"{prompt.dataset} {bp.name}")
                self.write(self.spec_row(bp, pipes[bp.name], prompt_ids, plain, plain_wall, base))
                bar.update(1)
            for peer in active:
                bar.set_postfix_str(f"{prompt.dataset} {row_name(peer)}")
                self.write(self.peer_row(peers, peer, first, prompt_ids, plain, plain_wall, base))
                bar.update(1)

    def spec_row(self, bp: BenchPipeline, pipe: Pipeline, prompt_ids: list[int], plain: Any, plain_wall: float, base: dict) -> dict:
        c, temp = bp.config, self.plan.temperature[bp.name]
        row = {
            **base, "kind": "spec", "pipeline": bp.name, "key": self.plan.keys[bp.name], "drafter": c.drafter.name,
            "scorer": c.scorer.name, "verifier": c.verifier.name, "kv_cache": c.kv_cache.name, "attention": c.attention.name,
            "budget": c.generation.budget, "temperature": temp,
        }
        if self.config.replay:
            return self.replay_row(bp, pipe, prompt_ids, plain, row)
        try:
            result, wall, peak = timed(lambda: pipe.generate(prompt_ids), pipe.target.info.device)
        except Exception as e:  # one failing pipeline must not end a long run: recorded, redone by --resume
            return self._error(row, e)
        s = result.stats
        mismatch, checked = None, temp == 0.0 or _seeded(pipe)
        if temp == 0.0:
            mismatch = describe_mismatch(pipe, prompt_ids, plain.tokens, result.tokens, self.config.near_tie_gap)
        elif checked:  # the sampling verifier draws per token index: seeded plain sampling must give the same tokens
            sampled = pipe.generate_plain(prompt_ids).tokens
            same = next((i for i, (a, b) in enumerate(zip(sampled, result.tokens)) if a != b), None)
            if same is None and len(sampled) != len(result.tokens):
                same = min(len(sampled), len(result.tokens))
            mismatch = None if same is None else {"position": same, "plain": sampled[same: same + 1],
                                                  "spec": result.tokens[same: same + 1], "near_tie": None}
        faith = None
        if isinstance(pipe.drafter, ProposalRecorder):
            agree = len(prompt_ids) + (mismatch["position"] if mismatch else len(plain.tokens))
            rounds = [(n, p) for n, p in pipe.drafter.rounds if n <= agree]  # on the plain path only
            faith = measure_faithfulness(
                pipe, prompt_ids, plain.tokens, rounds, c.generation.budget, self.config.faithfulness_nats,
                self.config.faithfulness_rounds, self._greedy_logprobs(pipe, prompt_ids, plain.tokens),
            )
        return {
            **row, "new_tokens": s.new_tokens, "rounds": s.rounds, "tau": s.tau, "wall_s": wall,
            "tokens_per_s": s.new_tokens / wall, "plain_wall_s": plain_wall, "speedup": plain_wall / wall,
            "identical": mismatch is None if checked else None, "mismatch": mismatch, "seconds": dict(s.seconds),
            "accepted_by_depth": list(s.accepted_by_depth), "tree_nodes": s.tree_nodes, "faithfulness": faith,
            "peak_mem_bytes": peak, "stopped": result.stopped,
        }

    def replay_row(self, bp: BenchPipeline, pipe: Pipeline, prompt_ids: list[int], plain: Any, row: dict) -> dict:
        """τ, acceptance and faithfulness of `bp` replayed against this prompt's plain output (no speeds:
        nothing is verified, and the output is plain decoding's by construction)."""
        try:
            layers = observed_layers(pipe.drafter)
            key = ("hidden", layers)
            if key not in self.per_prompt:  # one forward over prompt + output for every pipeline of these layers
                self.per_prompt[key] = context_hidden(pipe, list(prompt_ids) + list(plain.tokens[:-1]), layers)
            s = replay(pipe, prompt_ids, plain.tokens, bp.config.generation.budget, hidden=self.per_prompt[key])
        except Exception as e:
            return self._error(row, e)
        faith = None
        if isinstance(pipe.drafter, ProposalRecorder):
            faith = measure_faithfulness(
                pipe, prompt_ids, plain.tokens, pipe.drafter.rounds, bp.config.generation.budget,
                self.config.faithfulness_nats, self.config.faithfulness_rounds,
                self._greedy_logprobs(pipe, prompt_ids, plain.tokens),
            )  # fmt: skip
        return {
            **row, "replay": True, "new_tokens": s.new_tokens, "rounds": s.rounds, "tau": s.tau, "wall_s": 0.0,
            "tokens_per_s": None, "plain_wall_s": None, "speedup": None, "identical": None, "mismatch": None,
            "seconds": dict(s.seconds), "accepted_by_depth": list(s.accepted_by_depth), "tree_nodes": s.tree_nodes,
            "faithfulness": faith, "peak_mem_bytes": None, "stopped": None,
        }

    def _greedy_logprobs(self, pipe: Pipeline, prompt_ids: list[int], plain: list[int]) -> Callable[[], torch.Tensor]:
        """log p_target of plain decoding's own tokens, computed once per prompt when first asked for."""

        def get() -> torch.Tensor:
            if "greedy_lp" not in self.per_prompt:
                self.per_prompt["greedy_lp"] = token_logprobs(pipe, list(prompt_ids) + list(plain))
            return self.per_prompt["greedy_lp"]

        return get

    def peer_row(self, peers: Peers, peer: str, pipe: Pipeline, prompt_ids: list[int], plain: Any, plain_wall: float, base: dict) -> dict:
        name = row_name(peer)
        row = {**base, "kind": "peer", "pipeline": name, "key": self.plan.keys[name], "drafter": name, "budget": None,
               "temperature": 0.0, **peers.describe(peer)}
        try:
            tokens, wall, peak = timed(lambda: peers.generate(peer, prompt_ids, self.config.max_new_tokens), pipe.target.info.device)
        except Exception as e:
            return self._error(row, e)
        mismatch = describe_mismatch(pipe, prompt_ids, plain.tokens, tokens, self.config.near_tie_gap)
        return {
            **row, "new_tokens": len(tokens), "rounds": None, "wall_s": wall, "tokens_per_s": len(tokens) / wall,
            "plain_wall_s": plain_wall, "speedup": plain_wall / wall, "identical": mismatch is None, "mismatch": mismatch,
            "peak_mem_bytes": peak,
        }

    def _error(self, row: dict, e: Exception) -> dict:
        text = str(e).strip().splitlines()
        message = f"{type(e).__name__}: {text[0] if text else ''}"
        self.errors.append(f"{row['dataset']}/{row['prompt_id']} {row['pipeline']}: {message}")
        print(f"jetspec bench: {self.errors[-1]}", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {**row, "error": message}

    # ------------------------------------------------------------------ the end
    def finish(self) -> BenchOutcome:
        plan, config = self.plan, self.config
        if not self.run_written:
            append_row(plan.results, self.run)
        wanted = {(p.dataset, p.id) for p in plan.prompts}
        every = read_rows(plan.results)
        rows = [r for r in latest_prompt_rows(every, plan.keys) if (r["dataset"], r["prompt_id"]) in wanted]
        summaries = summarize(rows, self.run, runs={r["run"]: r for r in every if r.get("kind") == "run"})
        replace_summaries(plan.results, summaries)
        out = Path(config.output)
        plots = write_plots(summaries, out / "plots", config.name) if summaries else []
        markdown = out / "RESULTS.md"
        write_results_md(markdown, config.name, self.run, summaries, plots)
        return BenchOutcome(plan.results, summaries, markdown, plots, self.stopped_early, self.errors)


def run_bench(
    config: BenchConfig,
    registry: Registry | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str = "",
    progress: bool = True,
    max_minutes: float | None = None,
    shard: tuple[int, int] | None = None,
    summarize_only: bool = False,
    ranks: Ranks | None = None,
) -> BenchOutcome:
    """Plan (all checks, no model loaded), run what is not done yet, then summarise.

    `shard=(i, n)` runs only every n-th prompt from the i-th, so that n processes can share a
    machine; concatenating their results files and running with `summarize_only` (no model
    loaded, nothing decoded) writes the summary of what they finished.

    `ranks` (under torchrun): a tensor-parallel target decodes every prompt on every rank in
    lockstep and rank 0 writes (and runs the peers); any other target is data parallel, rank r
    taking shard r/W and appending to the one results file. All ranks read it before any writes,
    and rank 0 summarises once all have finished."""
    import jetspec

    registry = registry or jetspec.default_registry()
    plan = plan_bench(config, registry)
    if summarize_only:
        if not plan.results.is_file():
            raise ConfigError(f"nothing to summarize: '{plan.results}' does not exist")
        return BenchRun(plan, registry, command or f"jetspec bench ({config.name})", False, None).finish()
    if plan.results.exists() and not (resume or overwrite):
        raise ConfigError(f"'{plan.results}' exists; pass --resume to continue it or --overwrite to start again")
    lockstep = ranks is not None and config.target.options.get("tensor_parallel", 1) > 1
    if lockstep and (max_minutes or config.max_minutes):
        raise ConfigError("a time limit (max_minutes) cannot stop tensor-parallel ranks at the same prompt; "
                          "use --limit, or run without one")
    if ranks is not None and not lockstep:
        if shard is not None:
            raise ConfigError("--shard and torchrun both split the prompts; give one of them")
        shard = (ranks.rank, ranks.world)
    if overwrite and (ranks is None or ranks.leads):
        plan.results.unlink(missing_ok=True)
    plan.results.parent.mkdir(parents=True, exist_ok=True)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"shard must be I/N with 0 <= I < N, got {shard[0]}/{shard[1]}")
    if ranks is not None:
        barrier(ranks)  # every rank has checked the results file before any writes to it
    patient = patient_group(ranks) if ranks is not None and not lockstep else None  # shards end minutes apart
    run = BenchRun(plan, registry, command or f"jetspec bench ({config.name})", progress, max_minutes, shard,
                   writes=not lockstep or ranks.leads)
    if ranks is not None and not lockstep:
        run.run["run"] += f"-rank{ranks.rank}"  # one run row per rank, told apart
    run.execute()
    if ranks is not None:
        barrier(ranks, patient)  # every rank's rows are in
        if not ranks.leads:
            return BenchOutcome(plan.results, [], Path(config.output) / "RESULTS.md", [], run.stopped_early, run.errors)
    return run.finish()


def _seeded(pipe: Pipeline) -> bool:
    """A sampling verifier with a fixed seed: its output is a function of the target's logits."""
    from ..verifiers.sampling import SamplingVerifier

    return isinstance(pipe.verifier, SamplingVerifier) and pipe.verifier.options.seed is not None
