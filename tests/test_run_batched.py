"""`jetspec run --batch-size B` (or `generation.batch_size` in the config): the same rows as one
prompt at a time — one per prompt, each answer identical to its batch-1 answer (steps of the slots' two
halves overlapped too: `overlap = true`) — appended as
prompts finish; resume after a partial, torn output answers every prompt once; a failing prompt
is recorded in its row and the batch goes on; what cannot batch fails before any row, in one line."""

import pytest

from jetspec.bench.rows import read_rows
from jetspec.cli import main
from support.hf_folder import save_tiny_hf_folder
from test_run import answered, write_prompts

PROMPTS = [{"id": f"p{i}", "text": text} for i, text in enumerate(
    ["a b a b a b", "hello hello", "x", "1 2 1 2 1 2 1", "the cat the cat", "zz", "q r s q r s"])]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_batched")
    save_tiny_hf_folder(root / "model", seed=1)
    for name, target, extra in (("decoder", "decoder", "batch_size = 3\n"), ("overlap", "decoder", "batch_size = 4\noverlap = true\n"),
                                ("hf", "transformers", "")):
        (root / f"{name}.toml").write_text(f"""
target = {{ name = "{target}", path = "{root / 'model'}", device = "cpu" }}
drafter = {{ name = "ngram", n_max = 3 }}
[generation]
budget = 6
max_new_tokens = 8
{extra}""")
    return root


def run(root, config, prompts, out, *extra):
    return main(["run", "--config", str(root / f"{config}.toml"), "--prompts", str(prompts), "--out", str(out), "--no-progress", *extra])


def texts(out):
    return {i: (r["text"], r["tokens"], r["stopped"]) for i, r in answered(out).items()}


def test_batched_rows_equal_one_at_a_time_rows(root, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    one, cfg, flag = tmp_path / "one.jsonl", tmp_path / "cfg.jsonl", tmp_path / "flag.jsonl"
    assert run(root, "decoder", prompts, one, "--batch-size", "1") == 0
    assert run(root, "decoder", prompts, cfg) == 0  # batch_size = 3 from the config
    assert run(root, "decoder", prompts, flag, "--batch-size", "5", "--max-verify-rows", "12") == 0
    assert run(root, "overlap", prompts, tmp_path / "overlap.jsonl") == 0  # two halves in alternating steps
    assert set(texts(one)) == {p["id"] for p in PROMPTS}
    assert texts(cfg) == texts(one) and texts(flag) == texts(one) and texts(tmp_path / "overlap.jsonl") == texts(one)
    assert all(r["tau"] >= 1 and r["seconds"] > 0 and "error" not in r for r in read_rows(flag))
    assert "[jetspec run] 7 prompts done, 0 skipped, 0 errors" in capsys.readouterr().err


def test_batched_resume_after_a_partial_and_torn_output_answers_every_prompt_once(root, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    assert run(root, "decoder", prompts, out, "--limit", "4") == 0
    with out.open("ab") as f:  # a writer killed mid-row
        f.write(b'{"id": "p5", "text": "cut sh')
    assert run(root, "decoder", prompts, out, "--resume") == 0
    assert set(answered(out)) == {p["id"] for p in PROMPTS}
    assert run(root, "decoder", prompts, out, "--resume") == 0 and len(read_rows(out)) == len(PROMPTS)


def test_a_failing_prompt_in_a_batch_is_recorded_and_the_others_are_answered(root, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", [PROMPTS[0], {"id": "long", "text": "a " * 2000}, *PROMPTS[1:3]])
    out = tmp_path / "out.jsonl"
    assert run(root, "decoder", prompts, out) == 0
    rows = answered(out)
    assert rows["long"]["stopped"] == "error" and "CapacityError" in rows["long"]["error"]
    assert all("error" not in rows[p["id"]] for p in PROMPTS[:3])
    assert "prompt long (line 2): CapacityError" in capsys.readouterr().err


def test_a_target_without_a_batched_forward_fails_before_any_row(root, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    out = tmp_path / "out.jsonl"
    assert run(root, "hf", prompts, out, "--batch-size", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "has no batched forward (forward_batch); batch_size > 1 runs with target 'decoder'" in err[-1]
    assert not out.exists() or not read_rows(out)
    assert run(root, "decoder", prompts, out, "--batch-size", "0") == 2
    assert "batch_size" in capsys.readouterr().err
