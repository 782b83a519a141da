"""The command line: listing plugins, config commands, one-line user errors."""

import json
import subprocess
import sys

import pytest

from jetspec.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "jetspec.cli", *args], capture_output=True, text=True)


def test_plugins_lists_each_builtin_under_its_kind(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind, name in [("drafter", "ngram"), ("scorer", "best-first"), ("scorer", "chain"), ("verifier", "greedy"),
                       ("kv_cache", "dense"), ("attention", "torch"), ("target", "transformers")]:
        section = out.split(f"{kind}:")[1]
        assert f"  {name} " in section.split(":\n")[0] + "\n" or f"  {name}" in section


def test_config_schema_is_json(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "drafter" in schema["properties"]


def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[target]\nname = "transformers"\npath = "/x"\n[drafter]\nname = "ngram"\nnmax = 3\n')
    proc = run("config", "check", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "jetspec: error: drafter 'ngram': nmax: unknown field (options: n_max, n_min, max_matches, max_depth, calibration)"
    proc = run("generate", "hi", "--target-path", str(tmp_path / "missing"), "--drafter", "ngram")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_convert_and_train_head_report_bad_input_in_one_line(tmp_path):
    for args, expected in [
        (("convert", str(tmp_path / "missing.gguf"), str(tmp_path / "out")), "does not exist"),
        (("train-head", "--target", str(tmp_path / "nope"), "--prompts", "p.jsonl", "--out", str(tmp_path / "o")), "no target at"),
    ]:
        proc = run(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr


def test_train_head_has_its_own_help():
    proc = run("train-head", "--help")
    assert proc.returncode == 0 and "usage: jetspec train-head" in proc.stdout and "--kind" in proc.stdout


def test_generate_defaults_to_the_head_and_falls_back_to_ngram_without_a_trained_one(tmp_path):
    """No head is trained for a user's own model: the default drafter then says so and drafts
    with ngram; naming the head drafter is a one-line error saying how to train one, and random
    weights are used only when asked for by name (lossless, just slow)."""
    from head_fixtures import save_tiny_chat_model

    folder = save_tiny_chat_model(tmp_path / "tiny")
    common = ("generate", "abcabc", "--target-path", str(folder), "--max-new-tokens", "8", "--json")
    proc = run(*common)
    assert proc.returncode == 0, proc.stderr
    assert "no trained head for target" in proc.stderr and "drafting with ngram" in proc.stderr
    default = json.loads(proc.stdout)
    for drafter in ("jetspec", "dflash", "eagle"):
        proc = run(*common, "--drafter", drafter)
        kind = {"jetspec": "causal"}.get(drafter, drafter)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"no trained {kind} head for target" in proc.stderr and "jetspec train-head" in proc.stderr
        assert 'checkpoint = "random"' in proc.stderr
    (tmp_path / "random.toml").write_text('drafter = { name = "jetspec", checkpoint = "random" }\n')
    proc = run(*common, "--config", str(tmp_path / "random.toml"))
    assert proc.returncode == 0 and "no trained head" not in proc.stderr
    assert json.loads(proc.stdout)["tokens"] == default["tokens"]  # lossless either way


@pytest.mark.parametrize("gpu", [True, False])
def test_one_device_policy_for_generate_the_builder_and_a_config_file(monkeypatch, tmp_path, gpu):
    """For the same config, `jetspec generate` resolves the same components and options as
    `jetspec.builder()` and `jetspec.from_config(file)`: on a CUDA GPU with Triton, triton over a
    paged cache where the config names neither; the library defaults otherwise."""
    import importlib.util

    import torch

    import jetspec
    from jetspec.cli import parser
    from jetspec.cli_generate import _pipeline_config
    from jetspec.core.config import PipelineConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    policy = ("triton", "paged") if gpu else ("torch", "dense")
    cases = [  # (config file, what the builder is told, expected attention/kv_cache)
        ("", lambda b: b, policy),
        ('[target]\nname = "decoder"\npath = "x"\n', lambda b: b.target("decoder", path="x"), policy),
        ('[target]\nname = "decoder"\ndevice = "cpu"\n', lambda b: b.target("decoder", device="cpu"), ("torch", "dense")),
        ('target = "transformers"\n', lambda b: b.target("transformers"), ("torch", "dense")),
        ('attention = "torch"\n', lambda b: b.attention("torch"), ("torch", "dense")),  # the config's choice stands
    ]
    for i, (text, tell, expected) in enumerate(cases):
        file = tmp_path / f"c{i}.toml"
        file.write_text(text + '[generation]\nbudget = 8\n')
        cli = _pipeline_config(parser().parse_args(["generate", "hi", "--config", str(file)]))
        built = tell(jetspec.builder()).generation(budget=8).config()
        loaded = PipelineConfig.load(file)
        assert cli.model_dump() == built.model_dump() == loaded.model_dump(), text
        assert (cli.attention.name, cli.kv_cache.name) == expected, text


def test_compare_exits_1_when_speculation_changes_the_output(tmp_path, monkeypatch, capsys):
    """A verifier that changes the bonus token of every speculative round passes every structural
    check but is not lossless: `--compare` must say so in its exit status, not only in its text."""
    import jetspec
    from head_fixtures import save_tiny_chat_model
    from jetspec.core.interfaces import Acceptance
    from jetspec.core.registry import Implementation, Registry
    from jetspec.verifiers.greedy import GreedyOptions, GreedyVerifier

    class Liar(GreedyVerifier):
        def accept(self, tree, logits, state):
            acc = super().accept(tree, logits, state)
            return Acceptance(acc.path, (acc.bonus + 1) % logits.shape[-1]) if tree.size > 1 else acc

    class Plugin:
        @jetspec.hookimpl
        def jetspec_verifiers(self):
            return [Implementation("liar", lambda o: Liar(o), GreedyOptions)]

    monkeypatch.setattr(jetspec, "_default", Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("liar", Plugin())], entry_points=False))
    folder = save_tiny_chat_model(tmp_path / "tiny")
    common = ["generate", "abcabc", "--target-path", str(folder), "--max-new-tokens", "8", "--drafter", "ngram", "--compare", "--no-stream"]
    (tmp_path / "liar.toml").write_text('verifier = "liar"\n')
    assert main(common) == 0
    assert "outputs identical" in capsys.readouterr().err
    assert main([*common, "--config", str(tmp_path / "liar.toml")]) == 1
    err = capsys.readouterr().err
    assert "outputs DIFFER" in err and err.strip().splitlines()[-1].startswith("jetspec: error: speculative and plain greedy outputs differ")


def test_prompt_dash_reads_standard_input_as_utf8(tmp_path):
    from head_fixtures import save_tiny_chat_model

    folder = save_tiny_chat_model(tmp_path / "tiny")
    common = [sys.executable, "-m", "jetspec.cli", "generate", "--target-path", str(folder), "--drafter", "ngram",
              "--max-new-tokens", "6", "--json"]  # fmt: skip
    by_arg = subprocess.run([*common, "abcabc"], capture_output=True, text=True)
    by_stdin = subprocess.run([*common, "-"], input="abcabc", capture_output=True, text=True)
    assert by_arg.returncode == by_stdin.returncode == 0, by_stdin.stderr
    assert json.loads(by_stdin.stdout)["tokens"] == json.loads(by_arg.stdout)["tokens"]
    bad_stdin = subprocess.run([*common, "-"], input=b"ab\xffc", capture_output=True)
    assert bad_stdin.returncode == 2 and bad_stdin.stderr.decode().strip() == (
        "jetspec: error: the prompt on standard input is not UTF-8 text (byte 0xff at offset 2)")
    bad_arg = subprocess.run([*(c.encode() for c in common), b"ab\xffc"], capture_output=True)
    assert bad_arg.returncode == 2 and bad_arg.stderr.decode().strip().startswith(
        "jetspec: error: the prompt is not valid UTF-8 text"), bad_arg.stderr


def test_temperature_nan_says_what_is_wrong(tmp_path):
    proc = run("generate", "hi", "--target-path", str(tmp_path), "--temperature", "nan")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "jetspec: error: verifier 'sampling': temperature: must be a finite number, got nan (options: temperature, top_k, top_p, seed)")


def test_config_check_looks_at_the_model_folder_the_head_checkpoint_and_the_lookup_rates(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "head").mkdir()
    cases = [
        (f'target = {{ name = "decoder", path = "{tmp_path}/missing" }}\n', "target path", "is not a folder"),
        (f'target = {{ name = "transformers", path = "{tmp_path}/model" }}\n'
         f'drafter = {{ name = "jetspec", checkpoint = "{tmp_path}/head" }}\n', "no head checkpoint at", "head.json is missing"),
        (f'target = {{ name = "transformers", path = "{tmp_path}/model" }}\n'
         f'drafter = {{ name = "eagle", checkpoint = "random" }}\n', None, None),
        (f'target = {{ name = "transformers", path = "{tmp_path}/model" }}\n'
         f'drafter = {{ name = "ngram", calibration = "{tmp_path}/lookup.json" }}\n', "lookup calibration", "jetspec fit-lookup"),
    ]
    for i, (text, start, end) in enumerate(cases):
        (tmp_path / f"c{i}.toml").write_text(text)
        proc = run("config", "check", str(tmp_path / f"c{i}.toml"))
        if start is None:
            assert proc.returncode == 0 and proc.stdout.strip().endswith(": ok"), proc.stderr
        else:
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert start in proc.stderr and end in proc.stderr, proc.stderr


def test_a_failing_generation_prints_what_it_produced_with_the_error(tmp_path, monkeypatch, capsys):
    """--json: the tokens committed before a plugin failed come out with the one-line error."""
    import jetspec
    from head_fixtures import save_tiny_chat_model
    from jetspec.core.registry import Implementation, Registry
    from jetspec.scorers.best_first import BestFirstScorer, ChainOptions

    class Fails(BestFirstScorer):
        calls = 0

        def build(self, proposal, root, budget):
            Fails.calls += 1
            if Fails.calls > 3:
                raise ValueError("scorer bug")
            return super().build(proposal, root, budget)

    class Plugin:
        @jetspec.hookimpl
        def jetspec_tree_scorers(self):
            return [Implementation("fails", lambda o: Fails(), ChainOptions)]

    monkeypatch.setattr(jetspec, "_default", Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("bad", Plugin())], entry_points=False))
    folder = save_tiny_chat_model(tmp_path / "tiny")
    capsys.readouterr()
    (tmp_path / "c.toml").write_text('scorer = "fails"\n[generation]\nchat_template = false\n')
    assert main(["generate", "abcabcabc", "--target-path", str(folder), "--max-new-tokens", "20", "--drafter", "ngram",
                 "--config", str(tmp_path / "c.toml"), "--json"]) == 2  # fmt: skip
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert err.strip() == "jetspec: error: scorer 'fails' (plugin 'bad') raised ValueError: scorer bug in build" == "jetspec: error: " + row["error"]
    assert row["rounds"] == 3 and len(row["tokens"]) >= 3


def test_help_shows_the_defaults_and_explains_every_option():
    """Each command's --help gives every option a help text and shows the defaults it runs with
    (those of `generate` come from the config models, so the help cannot drift from them)."""
    from jetspec.core.config import GenerationConfig, PipelineConfig

    gen, drafter = GenerationConfig(), PipelineConfig().drafter.name
    top = run("--help").stdout
    assert f"drafter {drafter}," in top and f"budget {gen.budget}, max new tokens {gen.max_new_tokens}, device auto" in top
    g = " ".join(run("generate", "--help").stdout.split())  # unwrapped
    for expected in [f"tokens to generate at most (default: {gen.max_new_tokens})", f"plain decoding (default: {gen.budget})",
                     f"(default: {drafter};", "prompt the prompt text, or -", "--no-stream print the answer once",
                     "--no-chat-template give the prompt", 'device: the target\'s `device = "auto"`']:
        assert expected in g, expected
    assert "(default: None)" not in g and "(default: False)" not in g
    assert "(default: float32)" in run("convert", "--help").stdout
    t = " ".join(run("train-head", "--help").stdout.split())
    assert "--steps STEPS the run's total optimizer steps (the schedule's horizon) (default: 2000)" in t and "--seed SEED random seed (default: 0)" in t
    for command in ("generate", "run", "convert", "config", "bench", "train-head"):
        lines = run(command, "--help").stdout.splitlines() + [""]
        bare = [line for line, after in zip(lines, lines[1:])  # an option whose help is neither beside it nor below it
                if line.startswith("  -") and "  " not in line.strip() and not after.startswith(" " * 8)]
        assert not bare, f"{command}: options without help: {bare}"


def test_a_loaded_target_gets_the_library_defaults_not_the_decoder_device_policy(monkeypatch):
    """The device policy is for our decoder loaded by name; a target passed as an object (tests,
    notebooks, a plugin's model) keeps torch attention over a dense cache unless told otherwise —
    on a GPU machine too (found on the H200: a CPU-only test target got triton attention)."""
    import importlib.util

    import torch

    import jetspec
    from jetspec.testing import tiny_target

    loaded = tiny_target()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    config = jetspec.builder().target(loaded).config()
    assert (config.attention.name, config.kv_cache.name) == ("torch", "dense")
    assert jetspec.builder().target("decoder").config().attention.name == "triton"  # by name: the policy
