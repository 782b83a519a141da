"""When a pipeline is not lossless the bench says where and how: a deliberately broken verifier
(a test plugin) emits the target's second choice once; the bench must report that position, both
tokens, and the target's top-2 logit gap there. Also: rank-1 faithfulness of a branch."""

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import jetspec
from jetspec.bench import BenchConfig, run_bench
from jetspec.bench.faithfulness import measure_faithfulness
from jetspec.core.proposal import TokenTrie
from jetspec.core.registry import Registry
from jetspec.verifiers.greedy import accept_greedy
from support.hf_folder import save_tiny_hf_folder
from support.models import tiny_target

DEVIATIONS: list[dict] = []  # what the broken verifier did, for the test to compare


class SecondBestOnceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: int = 5  # first round whose bonus token lands at or after this generated position


class SecondBestOnce:
    """Greedy acceptance, except that once per sequence the bonus token is the target's 2nd choice."""

    def __init__(self, options):
        self.at = options.at

    def accept(self, tree, logits, state):
        acc = accept_greedy(tree, logits.argmax(-1).tolist())
        position = len(state.generated) + acc.accepted_drafts  # where the bonus token lands
        if position >= self.at and not any(d["state"] is state for d in DEVIATIONS):
            top = torch.topk(logits[acc.path[-1]].float(), 2)
            DEVIATIONS.append({"state": state, "position": position, "token": int(top.indices[1]),
                               "plain": int(top.indices[0]), "gap": float(top.values[0] - top.values[1])})
            return jetspec.Acceptance(path=acc.path, bonus=int(top.indices[1]))
        return acc


@jetspec.hookimpl
def jetspec_verifiers():
    return [jetspec.Implementation("second-best-once", SecondBestOnce, SecondBestOnceOptions, "test: one wrong token")]


def test_a_mismatch_is_reported_with_its_position_and_top2_gap(tmp_path):
    import sys

    registry = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("broken", sys.modules[__name__])], entry_points=False)
    save_tiny_hf_folder(tmp_path / "model")
    (tmp_path / "p.jsonl").write_text('{"text": "x y x y x y"}\n')
    config = BenchConfig.parse({
        "name": "broken", "target": {"name": "transformers", "path": str(tmp_path / "model")},
        "datasets": [{"name": "p", "path": str(tmp_path / "p.jsonl"), "field": "text"}],
        "pipelines": [{"name": "bad", "verifier": "second-best-once", "budget": 4}],
        "max_new_tokens": 12, "warmup_tokens": 0, "near_tie_gap": 0.0, "output": str(tmp_path / "out"),
    })
    DEVIATIONS.clear()
    outcome = run_bench(config, registry, progress=False)
    [deviation] = DEVIATIONS
    [summary] = [s for s in outcome.summaries if s["pipeline"] == "bad"]
    assert summary["identical"] == 0.0 and summary["mismatches"] == 1 and summary["near_ties"] == 0

    from jetspec.bench.rows import read_rows

    [row] = [r for r in read_rows(outcome.results) if r["kind"] == "spec"]
    m = row["mismatch"]
    assert m["position"] == deviation["position"]
    assert (m["spec_token"], m["plain_token"]) == (deviation["token"], deviation["plain"])
    assert m["top2_tokens"] == [deviation["plain"], deviation["token"]]
    assert m["top2_gap"] == pytest.approx(deviation["gap"], abs=1e-3)  # recomputed from the plain prefix
    assert m["choice_gap"] == pytest.approx(deviation["gap"], abs=1e-3) and m["near_tie"] is False
    assert "| bad |" in outcome.markdown.read_text() and "| 1 (0) |" in outcome.markdown.read_text()


def test_the_target_greedy_branch_is_faithful_and_its_least_likely_branch_is_not():
    pipe = jetspec.builder().target(tiny_target("llama", 0)).drafter("ngram").generation(budget=8, max_new_tokens=12).build()
    prompt = [5, 6, 7, 5, 6]
    plain = pipe.generate_plain(prompt).tokens
    from jetspec.bench.mismatch import chain_logits

    worst = chain_logits(pipe, prompt).argmin(-1)[-1].item()
    greedy, bad = TokenTrie(), TokenTrie()
    greedy.add_sequence(plain[:4])
    bad.add_sequence([worst] * 4)
    committed = len(prompt)  # a round right after the prompt
    faithful = measure_faithfulness(pipe, prompt, plain, [(committed, greedy)], max_len=4, nats=5.0, samples=8)
    assert faithful["rounds"] == 1 and faithful["faithful"] == 1.0 and abs(faithful["mean_gap_nats"]) < 1e-3
    unfaithful = measure_faithfulness(pipe, prompt, plain, [(committed, bad)], max_len=4, nats=5.0, samples=8)
    assert unfaithful["faithful"] == 0.0 and unfaithful["mean_gap_nats"] > 5.0
