"""`plan_bench`: everything a bench run checks before any model loads — its prompts, its
pipelines expanded over budgets and grouped by engine (KV cache + attention), each pipeline's
registry and capability checks, whether max_new_tokens + budget fit the target and the cache, and
the key of every row name (a changed setting makes `--resume` redo that row). Any problem is one
line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CapacityError, ConfigError
from ..core.registry import Registry, check_compatible
from .config import BenchConfig, BenchPipeline, expand, fingerprint
from .datasets import Prompt, interleave, load_prompts
from .peers import context_limit, hf_folder, peer_settings, row_name


@dataclass
class Plan:
    """Everything checked before any model loads."""

    config: BenchConfig
    prompts: list[Prompt]  # round-robin over datasets
    groups: dict[tuple[str, str], list[BenchPipeline]]  # engine -> its pipelines
    keys: dict[str, str]  # row name (pipeline, plain baseline, peer) -> key of what it measures
    temperature: dict[str, float]  # pipeline -> verifier temperature (0: greedy, outputs must be identical)
    faithfulness: set[str]  # pipelines whose rank-1 faithfulness is measured
    results: Path

    def plain_name(self, engine: tuple[str, str]) -> str:
        return "plain" if len(self.groups) == 1 else f"plain:{'+'.join(engine)}"



def plan_bench(config: BenchConfig, registry: Registry) -> Plan:
    prompts = interleave([load_prompts(d, config) for d in config.datasets])
    pipelines = expand(config)
    groups: dict[tuple[str, str], list[BenchPipeline]] = {}
    temperature, faithful = {}, set()
    limit = context_limit(hf_folder(config.target)[0])  # read from config.json; no model is loaded
    for bp in pipelines:
        options = bp.config.validate_with(registry)
        check_compatible({k: registry.get(k, c.name) for k, c in bp.config.components().items()})
        budget = bp.config.generation.budget
        need = 1 + config.max_new_tokens + budget  # the shortest prompt is one token
        kv = options["kv_cache"]
        pool = getattr(kv, "max_tokens", None) or (
            kv.max_pages * kv.page_size if getattr(kv, "max_pages", None) and getattr(kv, "page_size", None) else None
        )
        for what, cap in (("the target allows", limit), (f"kv_cache '{bp.config.kv_cache.name}' holds", pool)):
            if cap is not None and need > cap:
                raise CapacityError(
                    f"pipeline '{bp.name}': max_new_tokens ({config.max_new_tokens}) + budget ({budget}) + a 1-token "
                    f"prompt need {need} positions; {what} {cap}"
                )
        groups.setdefault(bp.engine, []).append(bp)
        temperature[bp.name] = float(getattr(options["verifier"], "temperature", 0.0) or 0.0)
        if config.replay and (temperature[bp.name] or bp.config.verifier.name not in ("greedy", "sampling")):
            raise ConfigError(f"pipeline '{bp.name}': replay needs greedy verification (a fixed output to replay)")
        provides = registry.get("drafter", bp.config.drafter.name).provides
        if config.faithfulness == "all" or (config.faithfulness == "auto" and "branch_scores" in provides):
            if config.faithfulness_budgets is None or budget in config.faithfulness_budgets:
                faithful.add(bp.name)
    inputs = (
        config.target.model_dump(), config.max_new_tokens, config.replay,
        [(d.name, d.path, d.field, d.chat_template if d.chat_template is not None else config.chat_template) for d in config.datasets],
    )
    plan = Plan(config, prompts, groups, {}, temperature, faithful, Path(config.output) / "results" / f"{config.name}.jsonl")
    for engine, bps in groups.items():
        plan.keys[plan.plain_name(engine)] = fingerprint(inputs, engine)
        for bp in bps:
            plan.keys[bp.name] = fingerprint(inputs, bp.config.model_dump())
    for peer in config.peers.include:
        plan.keys[row_name(peer)] = fingerprint(inputs, peer, peer_settings(config.peers, peer))
    return plan
