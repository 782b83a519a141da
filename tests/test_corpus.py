"""The self-distilled corpus (`jetspec make-corpus`) on a CPU with a tiny random chat model: Magpie
questions and training prompts answered greedily and sampled, duplicates and evaluation-set
overlaps dropped and counted, chunks that a later call appends to, the same corpus whether made in
one call or several."""

import json

import pytest
import torch

from head_fixtures import save_tiny_chat_model, write_tiny_eval_sets
from jetspec.core.errors import InputError
from jetspec.drafters.head.contamination import EvalOverlap
from jetspec.drafters.head.corpus import chunk_files, load_corpus
from jetspec.drafters.head.dedupe import DuplicateIndex, stable_hash
from jetspec.drafters.head.frozen_target import hf_identity, load_hf_target
from jetspec.drafters.head.make_corpus import CorpusConfig, main, make_corpus

LEAKED = "Janet's ducks lay sixteen eggs per day and she eats three of them for breakfast every single morning."
SMALL = dict(chunk_size=12, batch_size=12, max_question_tokens=12, max_answer_tokens=8)


def training_prompts() -> list[str]:
    days = ["Monday", "Tuesday", "Friday", "Sunday"]
    prompts = [f"Tom has {i} apples and buys {3 * i + 1} more on {days[i % 4]} at the market of town {i}. How many now?"
               for i in range(20)]  # fmt: skip
    prompts += [
        LEAKED + " How many are left?",  # 13+ words shared with the evaluation set below
        "Write a short poem about the sea, the wind and the old lighthouse keeper who lives alone.",
        "write a short poem about the sea -- the wind and the old lighthouse keeper, who lives alone!",  # exact
        "Write a short poem about the sea, the wind and the old lighthouse keeper who lives alone there.",  # near
    ]
    return prompts


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    return write_tiny_eval_sets(tmp_path_factory.mktemp("eval"), leaked=LEAKED)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    folder = save_tiny_chat_model(tmp_path_factory.mktemp("model") / "tiny-chat")
    model, tokenizer = load_hf_target(folder, "cpu", torch.float32)
    return folder, model, tokenizer, hf_identity(model, folder.name)


def make(target, out, eval_dir, **options):
    _, model, tokenizer, identity = target
    cfg = CorpusConfig(**{**SMALL, **options})
    return make_corpus(model, tokenizer, out, cfg, identity, training_prompts(), EvalOverlap(eval_dir), progress=False)


@pytest.fixture(scope="module")
def corpus(target, eval_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, make(target, out, eval_dir, rows=60)


def test_every_row_is_a_chat_prompt_and_the_targets_own_answer(target, corpus):
    _, model, tokenizer, _ = target
    out, manifest = corpus
    data = load_corpus(out)
    assert len(data) == manifest["rows"] >= 60 and data.tokens.dtype == torch.int32
    assert manifest["rows_by_temperature"] == {"0": manifest["questions"], "0.7": manifest["questions"]}
    greedy = [s for s in range(len(data)) if data.columns["temperature"][s] == 0]
    for s in greedy[:3]:  # greedy rows are what generate() answers, token for token
        row, plen = data.row(s), int(data.prompt_lens[s])
        opening = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
        assert row[: len(opening)].tolist() == opening and row[plen - 1] == tokenizer("\n")["input_ids"][0]
        again = model.generate(row[None, :plen], max_new_tokens=8, do_sample=False, eos_token_id=2, pad_token_id=0)[0, plen:]
        assert torch.equal(again[: len(row) - plen], row[plen:])
    sources = {s.split("/")[0] for s in manifest["rows_by_source"]}
    assert sources == {"gsm8k_train", "magpie"} and manifest["slots"]["magpie"] > 0


def test_duplicates_and_evaluation_overlaps_are_dropped_and_counted(corpus):
    out, manifest = corpus
    assert manifest["overlap_dropped"] == {"question:gsm8k_test": 1}
    assert manifest["dropped"]["duplicate_exact"] == 1 and manifest["dropped"]["duplicate_near"] == 1
    assert manifest["questions_by_source"]["gsm8k_train"] == len(training_prompts()) - 3
    data = load_corpus(out)
    hashes = set(data.columns["question_hash"].tolist())
    assert stable_hash(LEAKED + " How many are left?") not in hashes
    assert manifest["overlap_check"]["n"] == 13 and manifest["overlap_check"]["sets"]["gsm8k_test"]["items"] == 1


def test_a_corpus_made_in_several_calls_equals_one_made_in_one(target, eval_dir, corpus, tmp_path):
    out, manifest = corpus
    make(target, tmp_path, eval_dir, rows=20)
    first = len(chunk_files(tmp_path))
    again = make(target, tmp_path, eval_dir, rows=60)  # appends: the stream goes on from the chunks on disk
    assert 0 < first < again["chunks"] == manifest["chunks"] and len(again["calls"]) == 2
    a, b = load_corpus(out), load_corpus(tmp_path)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.offsets, b.offsets)
    assert again["dropped"] == manifest["dropped"]


def test_a_call_starts_no_chunk_it_cannot_finish_in_its_minutes(target, eval_dir, corpus, tmp_path):
    import shutil
    import time

    out, manifest = corpus
    shutil.copytree(out, tmp_path / "c")
    for path in chunk_files(tmp_path / "c")[3:]:  # as if the call had stopped after 3 chunks
        path.unlink()
    _, model, tokenizer, identity = target
    cfg = CorpusConfig(**SMALL, rows=60, minutes=0.001)  # 60 ms: less than any chunk took
    m = make_corpus(model, tokenizer, tmp_path / "c", cfg, identity, training_prompts(), EvalOverlap(eval_dir),
                    progress=False, clock_start=time.monotonic())  # fmt: skip
    assert m["chunks"] == 3 and m["calls"][-1]["chunks_made"] == 0 and not m["complete"]


def test_appending_with_other_settings_is_one_line(target, eval_dir, corpus, tmp_path):
    import shutil

    shutil.copytree(corpus[0], tmp_path / "c")
    with pytest.raises(InputError) as err:
        make(target, tmp_path / "c", eval_dir, rows=100, answer_temperatures=(0.0,))
    assert "was made with answer_temperatures = [0.0, 0.7], this call asks [0.0]" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, expected", [
    ({"topics": ("math", "poetry")}, "unknown topic poetry; topics: math, code, writing, reasoning, extraction, chat"),
    ({"answer_temperatures": (0.0, 5.0)}, "answer temperatures must be one or more numbers in [0, 2], got [0.0, 5.0]"),
    ({"chunk_size": 0}, "chunk-size must be an integer in [1, 1000000], got 0"),
    ({"gsm8k_share": 1.5}, "gsm8k-share must be in [0, 1], got 1.5"),
])  # fmt: skip
def test_bad_settings_are_one_line_naming_what_is_allowed(options, expected):
    with pytest.raises(InputError) as err:
        CorpusConfig(**options)
    assert str(err.value) == expected


def test_the_overlap_check_needs_every_evaluation_set(tmp_path):
    (tmp_path / "math500.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="missing gsm8k_test.jsonl, humaneval.jsonl.gz, spec_bench.jsonl"):
        EvalOverlap(tmp_path)


def test_a_question_is_a_near_duplicate_exactly_when_its_jaccard_similarity_reaches_the_threshold():
    from jetspec.drafters.head.dedupe import shingles

    base = "Explain how a binary search finds an element in a sorted list of integers step by step with an example."
    words = base.split()
    verdicts = []
    for j in range(len(words)):  # one word changed at each position: near the ends J >= 0.8, inside not
        variant = " ".join(words[:j] + ["banana"] + words[j + 1 :])
        a, b = shingles(base), shingles(variant)
        index = DuplicateIndex()
        assert index.add(base) and not index.add(base.upper() + "!")  # exact after normalization
        verdicts.append((not index.add(variant), len(a & b) / len(a | b) >= index.threshold))
    assert all(dropped == near for dropped, near in verdicts) and {v for v, _ in verdicts} == {True, False}
    index = DuplicateIndex()
    distinct = [f"Question {i}: what is the {i}-th prime number, and why is {i * 7 + 1} not one of them?" for i in range(50)]
    assert all(index.add(q) for q in distinct) and index.dropped == {"exact": 0, "near": 0}


def test_the_command_line_makes_a_corpus_and_records_its_command(target, eval_dir, tmp_path, capsys):
    folder = target[0]
    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in training_prompts()))
    argv = ["--out", str(tmp_path / "c"), "--target", str(folder), "--prompts", str(prompts), "--eval-dir", str(eval_dir),
            "--rows", "10", "--chunk-size", "12", "--batch-size", "12", "--max-question-tokens", "12",
            "--max-answer-tokens", "8", "--topics", "math,code", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["calls"][0]["command"] == "jetspec make-corpus " + " ".join(argv)
    assert manifest["settings"]["topics"] == ["math", "code"] and manifest["prompts"]["file"] == "train.jsonl"
    assert json.loads(capsys.readouterr().out)["rows"] == manifest["rows"] >= 10
    with pytest.raises(InputError, match="is an evaluation set"):
        main(argv[:4] + ["--prompts", str(eval_dir / "gsm8k_test.jsonl"), "--eval-dir", str(eval_dir)])


def test_jetspec_make_corpus_reports_bad_input_in_one_line(tmp_path, capsys):
    from jetspec.cli import main as jetspec

    assert jetspec(["make-corpus", "--out", str(tmp_path), "--topics", "math,poetry"]) == 2
    assert capsys.readouterr().err == "jetspec: error: unknown topic poetry; topics: math, code, writing, reasoning, extraction, chat\n"
