"""The command line: listing plugins, config commands, one-line user errors."""

import json
import subprocess
import sys

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
    assert proc.stderr.strip() == "jetspec: error: drafter 'ngram': nmax: unknown field (options: n_max, n_min, max_matches, max_depth)"
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
