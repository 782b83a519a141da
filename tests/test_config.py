"""Config: TOML, YAML, JSON and the builder give the same validated PipelineConfig; bad input
is one line naming the problem and what is allowed."""

import json

import pytest
import yaml

import jetspec
from jetspec.core.config import PipelineConfig, config_schema
from jetspec.core.errors import ConfigError
from support.models import tiny_target
from support.registry import make_test_registry

REG = make_test_registry()
TOML = """
target = "transformers"
[drafter]
name = "ngram"
n_max = 3
[scorer]
name = "best-first"
max_depth = 8
[generation]
budget = 48
max_new_tokens = 20
"""
AS_DICT = {
    "target": "transformers",
    "drafter": {"name": "ngram", "n_max": 3},
    "scorer": {"name": "best-first", "max_depth": 8},
    "generation": {"budget": 48, "max_new_tokens": 20},
}


def test_toml_yaml_json_and_builder_agree(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(AS_DICT))
    (tmp_path / "c.json").write_text(json.dumps(AS_DICT))
    built = (
        jetspec.builder(REG).target("transformers").drafter("ngram", n_max=3).scorer("best-first", max_depth=8)
        .generation(budget=48, max_new_tokens=20).config()
    )
    for name in ("c.toml", "c.yaml", "c.json"):
        assert PipelineConfig.load(tmp_path / name) == built


def test_builder_and_from_config_build_the_same_pipeline(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    target = tiny_target("llama", 0)
    a = jetspec.from_config(tmp_path / "c.toml", target=target, registry=REG)
    b = jetspec.builder(REG).target(target).drafter("ngram", n_max=3).scorer("best-first", max_depth=8).generation(
        budget=48, max_new_tokens=20).build()
    assert type(a) is type(b) and type(a.drafter) is type(b.drafter) and type(a.scorer) is type(b.scorer)
    assert a.drafter.options == b.drafter.options and a.scorer.options == b.scorer.options
    assert a.generate([5, 6, 7, 5, 6]).tokens == b.generate([5, 6, 7, 5, 6]).tokens


@pytest.mark.parametrize(
    "data, message",
    [
        ({"drafter": "nope"}, "unknown drafter 'nope'; registered: "),
        ({"drafter": {"name": "ngram", "nmax": 2}}, "drafter 'ngram': nmax: unknown field (options: n_max"),
        ({"drafter": {"name": "ngram", "n_min": 5, "n_max": 2}}, "n_min (5) must not exceed n_max (2)"),
        ({"generation": {"budget": -1}}, "generation.budget: Input should be greater than or equal to 0"),
        ({"colour": "red"}, "colour: unknown field; top-level fields: target, drafter"),
        # strict types: nothing is coerced
        ({"generation": {"budget": True}}, "generation.budget: Input should be a valid integer, got True"),
        ({"generation": {"max_new_tokens": "64"}}, "generation.max_new_tokens: Input should be a valid integer, got '64'"),
        ({"generation": {"budget": 8.0}}, "generation.budget: Input should be a valid integer, got 8.0"),
        ({"generation": {"chat_template": 1}}, "generation.chat_template: Input should be a valid boolean, got 1"),
        ({"generation": {"stop_token_ids": [-3]}}, "generation.stop_token_ids.0: Input should be greater than or equal to 0"),
        ({"drafter": {"name": "ngram", "n_max": "4"}}, "drafter 'ngram': n_max: Input should be a valid integer, got '4'"),
        ({"drafter": {"name": "ngram", "n_max": True}}, "drafter 'ngram': n_max: Input should be a valid integer, got True"),
        ({"verifier": {"name": "sampling", "temperature": "0.5"}}, "temperature: Input should be a valid number, got '0.5'"),
        ({"verifier": {"name": "sampling", "temperature": float("nan")}}, "verifier 'sampling': temperature: must be a finite number, got nan"),
        ({"verifier": {"name": "sampling", "top_p": float("inf")}}, "verifier 'sampling': top_p: must be a finite number, got inf"),
        ({"drafter": {"name": "jetspec", "target_layers": [1, "2"]}}, "target_layers.1: Input should be a valid integer, got '2'"),
    ],
)
def test_bad_config_is_one_line(data, message):
    with pytest.raises(ConfigError) as e:
        PipelineConfig.parse({"target": {"name": "transformers", "path": "/m"}, **data}).validate_with(REG)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_what_a_file_cannot_spell_is_still_read():
    """Strict, but as a file states values: an int is a float, a list a list, a string a Literal."""
    opts = PipelineConfig.parse({"verifier": {"name": "sampling", "temperature": 1, "seed": 3},
                                 "kv_cache": {"name": "paged", "commit": "remap"},
                                 "drafter": {"name": "jetspec", "target_layers": [0, 1]}}).validate_with(REG)  # fmt: skip
    assert opts["verifier"].temperature == 1.0 and opts["kv_cache"].commit == "remap" and opts["drafter"].target_layers == [0, 1]


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        PipelineConfig.load(tmp_path / "missing.toml")
    (tmp_path / "x.ini").write_text("a=1")
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml, \.yml or \.json"):
        PipelineConfig.load(tmp_path / "x.ini")
    (tmp_path / "broken.toml").write_text("[drafter\nname=")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        PipelineConfig.load(tmp_path / "broken.toml")


def test_schema_lists_every_implementation_with_its_options():
    schema = json.dumps(config_schema(REG))
    for name in ["ngram", "oracle", "best-first", "chain", "greedy", "dense", "torch", "n_max", "max_depth"]:
        assert f'"{name}"' in schema
