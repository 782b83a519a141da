"""Bench configs and prompt sets: sweeps expand by name, built-in sets resolve, and every bad input
is a one-line error raised before any model loads (the target folders below hold no weights, so
loading one would fail with a different error)."""

import json
from pathlib import Path

import pytest

from jetspec.bench import BenchConfig, run_bench
from jetspec.bench.config import expand
from jetspec.bench.datasets import MT_BENCH, load_prompts, prompts_dir
from jetspec.core.errors import CapacityError, ConfigError
from support.registry import make_test_registry

REG = make_test_registry()


def bench(tmp_path, **over):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 512}))
    (tmp_path / "p.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three"}\n')
    data = {
        "target": {"name": "transformers", "path": str(model)},
        "datasets": [{"name": "mine", "path": str(tmp_path / "p.jsonl"), "field": "text"}],
        "pipelines": [{"name": "ngram", "budgets": [16, 64]}],
        "max_new_tokens": 32,
        "output": str(tmp_path / "out"),
        **over,
    }
    return BenchConfig.parse(data)


def fails(tmp_path, error, message, **over):
    with pytest.raises(error) as e:
        run_bench(bench(tmp_path, **over), REG, progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing was run, nothing was written


def test_a_budget_sweep_is_one_pipeline_per_budget(tmp_path):
    pipes = expand(bench(tmp_path, pipelines=[{"name": "ng", "budgets": [8, 32]}, {"name": "chain", "scorer": "chain", "budget": 4}]))
    assert [(p.name, p.config.generation.budget, p.config.scorer.name) for p in pipes] == [
        ("ng@8", 8, "best-first"), ("ng@32", 32, "best-first"), ("chain", 4, "chain")]
    assert all(p.config.generation.max_new_tokens == 32 for p in pipes)


def test_budget_zero_is_plain_decoding_through_the_pipeline_s_own_settings(tmp_path):
    """A budget-0 pipeline (no default budget in its place) with `plain_ahead = false`: plain decoding one
    step at a time, timed as a row of its own against the bench's plain row."""
    (p,) = expand(bench(tmp_path, pipelines=[{"name": "plain-step-by-step", "budget": 0, "plain_ahead": False}]))
    assert (p.config.generation.budget, p.config.generation.plain_ahead) == (0, False)
    (q,) = expand(bench(tmp_path, pipelines=[{"name": "ng"}]))
    assert (q.config.generation.budget, q.config.generation.plain_ahead) == (32, True)


@pytest.mark.parametrize("over, message", [
    ({"pipelines": [{"name": "x", "budget": 8, "budgets": [8]}]}, "give `budget` or `budgets`, not both"),
    ({"pipelines": [{"name": "x"}, {"name": "x"}]}, "pipeline names must be unique; repeated: x"),
    ({"datasets": ["math500"], "colour": 1}, "colour: unknown field"),
    # strict and bounded, like a pipeline config
    ({"max_new_tokens": "32"}, r"max_new_tokens: Input should be a valid integer, got '32'"),
    ({"count": True}, "count: Input should be a valid integer, got True"),
    ({"pipelines": [{"name": "x", "budgets": [8, 100000]}]}, r"budgets.1: Input should be less than or equal to 4096"),
    ({"peers": {"prompt_lookup_num_tokens": 10**6}}, "less than or equal to 1024"),
])
def test_malformed_configs_are_one_line(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        bench(tmp_path, **over)


def test_unknown_dataset(tmp_path):
    fails(tmp_path, ConfigError, "unknown dataset 'mmlu'; built-in: math500, gsm8k, humaneval, spec_bench", datasets=["mmlu"])


def test_unknown_field(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "hi"}\n')
    fails(tmp_path, ConfigError, "record 1 of", datasets=[{"name": "q", "path": str(tmp_path / "q.jsonl"), "field": "text"}])
    fails(tmp_path, ConfigError, "has no field 'text'; fields: question",
          datasets=[{"name": "q", "path": str(tmp_path / "q.jsonl"), "field": "text"}])


def test_empty_prompt_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    fails(tmp_path, ConfigError, "holds no prompts", datasets=[{"name": "e", "path": str(tmp_path / "empty.jsonl"), "field": "text"}])


def test_unknown_component(tmp_path):
    fails(tmp_path, ConfigError, "unknown drafter 'medusa'; registered:", pipelines=[{"name": "m", "drafter": "medusa"}])


def test_a_budget_the_context_cannot_hold(tmp_path):
    fails(tmp_path, CapacityError, "pipeline 'ngram@512': max_new_tokens (32) + budget (512) + a 1-token prompt need 545 "
          "positions; the target allows 512", pipelines=[{"name": "ngram", "budgets": [16, 512]}])


def test_subsets_are_seeded_and_categories_filter(tmp_path):
    rows = [{"category": c, "turns": [f"{c} {i}"]} for i, c in enumerate(list(MT_BENCH) * 3 + ["qa"] * 5)]
    (tmp_path / "spec_bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = bench(tmp_path, prompts_dir=str(tmp_path), datasets=["spec_bench/mt_bench", "spec_bench/qa"])
    mt, qa = (load_prompts(d, cfg) for d in cfg.datasets)
    assert len(mt) == 24 and len(qa) == 5 and all(p.text.startswith("qa") for p in qa)
    a, b = (load_prompts(cfg.datasets[0], cfg.model_copy(update={"count": 5, "seed": s})) for s in (1, 1))
    c = load_prompts(cfg.datasets[0], cfg.model_copy(update={"count": 5, "seed": 2}))
    assert a == b and a != c and len(a) == 5


@pytest.mark.skipif(not (prompts_dir() / "spec_bench.jsonl").is_file(), reason="shared prompt files not next to this checkout")
def test_the_builtin_prompt_sets(tmp_path):
    cfg = bench(tmp_path, datasets=["math500", "gsm8k", "humaneval", "spec_bench", "spec_bench/mt_bench"])
    sizes = [len(load_prompts(d, cfg)) for d in cfg.datasets]
    assert sizes == [500, 1319, 164, 480, 80]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "bench" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_the_committed_bench_configs_are_valid(path):
    """Every config in bench/configs parses, and each of its pipelines validates against the registry."""
    import jetspec

    registry = jetspec.default_registry()
    for bp in expand(BenchConfig.load(path)):
        bp.config.validate_with(registry)
