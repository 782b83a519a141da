"""`jetspec run` end to end on a tiny Hugging Face folder: a JSONL of prompts in, one row per
prompt out; resuming a partial or torn output answers every prompt exactly once; a bad line is
reported with its number and the run goes on; gzip input; prompt and id fields chosen by name."""

import gzip
import json

import pytest

from jetspec.bench.rows import read_rows
from jetspec.cli import main
from jetspec.runs import prompt_text, read_prompts
from support.hf_folder import save_tiny_hf_folder

RECORDS = [
    {"id": "a", "prompt": "a b a b a b"},
    {"question_id": 7, "turns": ["say 7 7 7 again", "later"]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x y x y"}]},
    {"problem": "1 2 1 2 1"},
]
ROW_FIELDS = {"id", "text", "tokens", "tau", "seconds", "stopped"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    save_tiny_hf_folder(root / "model", seed=0)
    (root / "run.toml").write_text(f"""
target = {{ name = "transformers", path = "{root / 'model'}" }}
drafter = {{ name = "ngram", n_max = 3 }}
[generation]
budget = 4
max_new_tokens = 6
""")
    return root


def write_prompts(path, lines):
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def run(root, prompts, out, *extra):
    return main(["run", "--config", str(root / "run.toml"), "--prompts", str(prompts), "--out", str(out), "--no-progress", *extra])


def answered(out):
    rows = read_rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate rows: {ids}"
    return {r["id"]: r for r in rows}


def test_every_prompt_gets_one_row_with_its_answer(root, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert run(root, write_prompts(tmp_path / "p.jsonl", RECORDS), out) == 0
    rows = answered(out)
    assert set(rows) == {"a", "7", "3", "4"}  # ids from "id", "question_id", else the line number
    for r in rows.values():
        assert set(r) == ROW_FIELDS and "error" not in r
        assert isinstance(r["text"], str) and 1 <= r["tokens"] <= 6 and r["tau"] >= 1 and r["seconds"] > 0
        assert r["stopped"] in ("eos", "stop_token", "length")
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("[jetspec run] 4 prompts done, 0 skipped, 0 errors") and "tok/s" in summary
    # without --resume an output holding rows is never appended to nor overwritten
    assert run(root, tmp_path / "p.jsonl", out) == 2
    assert "--resume" in capsys.readouterr().err and len(read_rows(out)) == 4


def test_resume_after_a_partial_and_torn_output_answers_every_prompt_once(root, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": i, "text": f"a b {i} a b"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    assert run(root, prompts, out, "--limit", "2") == 0
    assert set(answered(out)) == {"0", "1"}
    with out.open("ab") as f:  # a writer killed mid-row
        f.write(b'{"id": "2", "text": "cut sh')
    assert run(root, prompts, out, "--resume") == 0
    rows = answered(out)
    assert set(rows) == {str(i) for i in range(5)} and all("error" not in r for r in rows.values())
    assert "2 skipped" in capsys.readouterr().err
    # nothing left: a second resume appends nothing
    assert run(root, prompts, out, "--resume") == 0
    assert len(read_rows(out)) == 5 and out.read_bytes().endswith(b"\n")


def test_a_torn_last_line_is_cut_even_when_nothing_is_left_to_run(root, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"text": "a b a b"}])
    out = tmp_path / "out.jsonl"
    assert run(root, prompts, out) == 0
    with out.open("ab") as f:
        f.write(b'{"id": "9", "te')
    assert run(root, prompts, out, "--resume") == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1"]


def test_bad_lines_are_reported_with_their_number_and_the_run_goes_on(root, tmp_path, capsys):
    lines = [{"text": "a b a b"}, "not json {", {"answer": "no prompt here"}, "[1, 2]", {"id": 0, "text": "again"},
             {"text": "x y x y"}]  # fmt: skip
    prompts = write_prompts(tmp_path / "p.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert run(root, prompts, out) == 0
    err = capsys.readouterr().err
    for n, what in ((2, "not JSON"), (3, "no prompt"), (4, "not a JSON object")):
        assert f"line {n}: {what}" in err
    assert set(answered(out)) == {"1", "0", "6"}  # line 5's id 0 is not line 1's id "1"


def test_a_failed_generation_is_recorded_in_its_row_and_the_run_goes_on(root, tmp_path, capsys):
    long = "a " * 5000  # more positions than the tiny model has
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "long", "text": long}, {"id": "ok", "text": "a b a b"}])
    out = tmp_path / "out.jsonl"
    assert run(root, prompts, out) == 0
    rows = answered(out)
    assert rows["long"]["stopped"] == "error" and "CapacityError" in rows["long"]["error"]
    assert "error" not in rows["ok"] and rows["ok"]["tokens"] >= 1
    err = capsys.readouterr().err
    assert "prompt long (line 1): CapacityError" in err and "1 errors" in err


def test_retry_errors_runs_the_errored_prompts_again_and_keeps_every_other_row_as_it_was(root, tmp_path, capsys):
    """--resume alone counts an error row as answered; --resume --retry-errors takes the error rows out
    (the other lines byte for byte) and runs those prompts again: still one row per id."""
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "long", "text": "a " * 5000}, {"id": "ok", "text": "a b a b"}])
    out = tmp_path / "out.jsonl"
    assert run(root, prompts, out) == 0
    assert answered(out)["long"]["stopped"] == "error"
    ok_line = next(line for line in out.read_text().splitlines() if json.loads(line)["id"] == "ok")
    write_prompts(prompts, [{"id": "long", "text": "a b c a b c"}, {"id": "ok", "text": "a b a b"}])  # the input mended
    assert run(root, prompts, out, "--resume") == 0
    assert answered(out)["long"]["stopped"] == "error" and "2 skipped" in capsys.readouterr().err
    assert run(root, prompts, out, "--resume", "--retry-errors") == 0
    rows = answered(out)
    assert set(rows) == {"long", "ok"} and "error" not in rows["long"] and rows["long"]["tokens"] >= 1
    assert ok_line in out.read_text().splitlines()  # untouched
    err = capsys.readouterr().err
    assert f"1 error row(s) taken out of {out}; those prompts run again" in err and "1 prompts done, 1 skipped" in err


def test_retry_errors_without_resume_is_refused_in_one_line_before_a_model_loads(root, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"text": "a b a b"}])
    out = tmp_path / "out.jsonl"
    config = tmp_path / "broken.toml"
    config.write_text('target = { name = "transformers", path = "/nowhere" }\n')  # loading it would fail otherwise
    assert main(["run", "--config", str(config), "--prompts", str(prompts), "--out", str(out), "--retry-errors"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--retry-errors continues an output: give it with --resume")
    assert not out.exists()


def test_gzip_input_and_a_named_field(root, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl.gz", [{"task_id": "t/1", "body": "a b a b", "prompt": "unused"}])
    out = tmp_path / "out.jsonl"
    assert run(root, prompts, out, "--field", "body") == 0
    assert set(answered(out)) == {"t/1"}


def test_prompt_fields():
    assert prompt_text({"text": "t", "prompt": "p"}) == "p"  # the first of PROMPT_FIELDS
    assert prompt_text({"turns": ["first", "second"]}) == "first"
    assert prompt_text({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}) == "u"
    assert prompt_text({"prompt": "  "}) is None and prompt_text({"prompt": 3}) is None
    assert prompt_text({"q": "x", "prompt": "p"}, field="q") == "x"


def test_repeated_ids_are_skipped(tmp_path):
    warnings = []
    path = write_prompts(tmp_path / "p.jsonl", [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}])
    assert [p.text for p in read_prompts(path, warn=warnings.append)] == ["a"]
    assert len(warnings) == 1 and "line 2" in warnings[0]
