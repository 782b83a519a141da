"""Prompt lookup scored by measured acceptance (`drafters/lookup_calibration.py`, `lookup_fit.py`):
the fit counts, at every position of the target's text, each child on the true path of the trie
the `ngram` drafter proposes there, by (match length, depth, count fraction) — checked against a
brute-force reading of that rule; the drafter then scores every edge by its cell's rate; the
`jetspec` drafter reads the rates beside its head; bad files and commands fail in one line."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from head_fixtures import HeadTarget, observed, tiny_corpus, tiny_llama
from jetspec.cli import main as cli_main
from jetspec.core.errors import ConfigError, InputError
from jetspec.core.interfaces import DecodeState
from jetspec.core.proposal import EmptyProposal
from jetspec.drafters.head import HeadOptions, jetspec_drafter, save_head
from jetspec.drafters.lookup_calibration import BUCKETS, DEPTHS, MIN_TRIALS, LookupCalibration
from jetspec.drafters.lookup_fit import fit
from jetspec.drafters.ngram import NgramDrafter, NgramOptions

SHIPPED = "jetspec/assets/heads/SmolLM2-135M-Instruct/causal"


def longest_match(context, o):
    """(n, continuations) of the longest suffix n-gram with earlier occurrences, read by brute force."""
    for n in range(min(o.n_max, len(context)), o.n_min - 1, -1):
        after = [s for s in range(n, len(context)) if context[s - n : s] == context[len(context) - n :]]
        if after:
            return n, [context[s : s + o.max_depth] for s in after[-o.max_matches :]]
    return None


def prefix_counts(continuations):
    counts = {}
    for seq in continuations:
        for d in range(len(seq) + 1):
            counts[tuple(seq[:d])] = counts.get(tuple(seq[:d]), 0) + 1
    return counts


def bucket(count, whole):
    return 2 if count == whole else 1 if 2 * count >= whole else 0


def brute_force_tally(tokens, start, o):
    """{(n, depth bucket, fraction bucket): [trials, successes]} over every position of the answer."""
    tally = {}
    for t in range(start, len(tokens)):
        found = longest_match(tokens[:t], o)
        if found is None:
            continue
        n, continuations = found
        counts, path = prefix_counts(continuations), ()
        for depth, true in enumerate(tokens[t : t + o.max_depth], 1):
            kids = {p[-1]: c for p, c in counts.items() if len(p) == depth and p[:-1] == path}
            for token, c in kids.items():
                cell = tally.setdefault((n, min(depth, DEPTHS), bucket(c, counts[path])), [0, 0])
                cell[0] += 1
                cell[1] += token == true
            if true not in kids:
                break
            path += (true,)
    return tally


def distinct_rates(n_max):
    """A calibration whose every cell has its own rate: rate = (100 n + 10 d + f + 1) / 1000."""
    rates = [[[(100 * n + 10 * d + f + 1) / 1000 for f in range(BUCKETS)] for d in range(1, DEPTHS + 1)] for n in range(1, n_max + 1)]
    zeros = [[[0] * BUCKETS for _ in range(DEPTHS)] for _ in range(n_max)]
    return LookupCalibration(1, n_max, rates, zeros, zeros)


@settings(max_examples=40, deadline=None)
@given(tokens=st.lists(st.integers(0, 3), min_size=2, max_size=50), start=st.integers(1, 10),
       n_max=st.integers(1, 3), max_matches=st.integers(1, 3), max_depth=st.integers(1, 10))
def test_the_fit_counts_each_child_on_the_true_path_by_match_length_depth_and_fraction(tokens, start, n_max, max_matches, max_depth):
    o = NgramOptions(n_max=n_max, max_matches=max_matches, max_depth=max_depth)
    start = min(start, len(tokens) - 1)
    cal = fit([(tokens, start)], o)
    want = brute_force_tally(tokens, start, o)
    for n in range(1, n_max + 1):
        for d in range(1, DEPTHS + 1):
            for f in range(BUCKETS):
                trials, successes = want.get((n, d, f), [0, 0])
                assert (cal.trials[n - 1][d - 1][f], cal.successes[n - 1][d - 1][f]) == (trials, successes)


def test_rates_are_smoothed_and_a_thin_cell_takes_the_rate_of_the_depth_above():
    trials = [[[0] * BUCKETS for _ in range(DEPTHS)]]
    successes = [[[0] * BUCKETS for _ in range(DEPTHS)]]
    trials[0][0][2], successes[0][0][2] = 98, 48  # depth 1: (48 + 1) / (98 + 2)
    trials[0][1][2], successes[0][1][2] = MIN_TRIALS - 1, MIN_TRIALS - 1  # too thin: depth 1's rate
    trials[0][2][2], successes[0][2][2] = MIN_TRIALS, MIN_TRIALS  # (20 + 1) / (20 + 2)
    cal = LookupCalibration.from_counts(1, 1, trials, successes)
    assert cal.rates[0][0][2] == pytest.approx(0.49)
    assert cal.rates[0][1][2] == pytest.approx(0.49)
    assert cal.rates[0][2][2] == pytest.approx(21 / 22)
    assert cal.rates[0][3][2] == pytest.approx(21 / 22)  # no trials at all: the depth above, again
    assert cal.rates[0][0][0] == 0.5  # depth 1 without trials: (0 + 1) / (0 + 2)


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 4), min_size=1, max_size=60), n_max=st.integers(1, 4),
       max_matches=st.integers(1, 4), budget=st.integers(1, 12))
def test_a_calibrated_drafter_scores_every_edge_by_its_cells_rate(tokens, n_max, max_matches, budget):
    o = NgramOptions(n_max=n_max, max_matches=max_matches, max_depth=12)
    drafter = NgramDrafter(o, calibration=distinct_rates(4))
    state = DecodeState(tokens=list(tokens), prompt_len=len(tokens))
    drafter.reset(state)
    proposal = drafter.propose(state, budget)
    found = longest_match(tokens, o.model_copy(update={"max_depth": min(o.max_depth, budget)}))
    if found is None:
        assert isinstance(proposal, EmptyProposal)
        return
    n, continuations = found
    counts = prefix_counts(continuations)
    for path, c in counts.items():
        if path:
            row = dict(proposal.children(path[:-1]))
            d, f = min(len(path), DEPTHS), bucket(c, counts[path[:-1]])
            assert row[path[-1]] == pytest.approx(math.log((100 * n + 10 * d + f + 1) / 1000))


def test_a_drafter_matching_ngrams_the_fit_did_not_measure_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="fitted for matches of 1..2 tokens; this drafter matches 1..4"):
        NgramDrafter(NgramOptions(n_max=4), calibration=distinct_rates(2))
    shorter = distinct_rates(4)
    shorter.n_min = 2
    with pytest.raises(ConfigError, match="fitted for matches of 2..4 tokens; this drafter matches 1..4"):
        NgramDrafter(NgramOptions(n_max=4, n_min=1), calibration=shorter)
    NgramDrafter(NgramOptions(n_max=3, n_min=2), calibration=shorter)  # inside what was measured


def test_a_calibration_file_round_trips(tmp_path):
    cal = distinct_rates(3)
    cal.source = {"command": "jetspec fit-lookup ..."}
    back = LookupCalibration.load(cal.save(tmp_path / "lookup.json"))
    assert (back.n_min, back.n_max, back.rates, back.source) == (1, 3, cal.rates, cal.source)


@pytest.mark.parametrize("body,expected", [
    ("not json", "cannot be read as JSON"),
    (json.dumps({"format": "other"}), "not a jetspec-lookup-calibration/1 file"),
    (json.dumps({"format": "jetspec-lookup-calibration/1", "n_min": 1}), "malformed"),
    (json.dumps({"format": "jetspec-lookup-calibration/1", "n_min": 1, "n_max": 1, "depths": DEPTHS, "buckets": BUCKETS,
                 "rates": [[[0.5] * BUCKETS] * (DEPTHS - 1)]}), "rates must be"),
    (json.dumps({"format": "jetspec-lookup-calibration/1", "n_min": 1, "n_max": 1, "depths": DEPTHS, "buckets": BUCKETS,
                 "rates": [[[1.0] * BUCKETS] * DEPTHS]}), "every rate must lie in"),
])  # fmt: skip
def test_a_bad_calibration_file_is_one_line_naming_it(tmp_path, body, expected):
    path = tmp_path / "lookup.json"
    path.write_text(body)
    with pytest.raises(InputError, match=expected) as e:
        LookupCalibration.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match=expected):
        NgramDrafter(NgramOptions(calibration=str(path)))


def test_the_jetspec_drafter_scores_its_lookup_with_the_rates_beside_its_head(tmp_path):
    target = HeadTarget(tiny_llama())
    folder = tmp_path / "head"
    save_head(jetspec_drafter(HeadOptions(checkpoint="random", block_size=6), target).head, folder, dtype=torch.float32)
    tokens = [5, 17, 33, 8, 61, 12, 40, 9, 5, 17]  # the suffix [5, 17] occurred before, followed by 33, 8, ...

    def lookup_logp(**options):
        drafter = jetspec_drafter(HeadOptions(checkpoint=str(folder), top_k=3, **options), target)
        return dict(drafter.propose(observed(drafter, target, tokens), budget=16).children(()))[33]

    assert lookup_logp() == 0.0  # no lookup.json: the count fraction, log 1
    distinct_rates(4).save(folder / "lookup.json")
    assert lookup_logp() == pytest.approx(math.log(0.213))  # match of 2, depth 1, all occurrences agree
    assert lookup_logp(lookup_calibration=False) == 0.0


def test_the_shipped_rates_were_fitted_on_the_shipped_heads_target():
    cal = LookupCalibration.load(f"{SHIPPED}/lookup.json")
    head = json.loads(open(f"{SHIPPED}/head.json").read())
    assert cal.source["target_fingerprint"] == head["target_fingerprint"]
    assert cal.n_max >= NgramOptions().n_max and cal.source["rows"] >= 1000


def test_jetspec_fit_lookup_writes_the_rates_of_a_corpus_and_records_its_command(tmp_path, capsys):
    prompts = [f"Tom has {i} apples and {i} pears and {i} plums. How many?" for i in range(12)]
    *_, corpus = tiny_corpus(tmp_path, prompts, rows=24, chunk=24)
    out = tmp_path / "lookup.json"
    assert cli_main(["fit-lookup", "--corpus", str(corpus), "--out", str(out), "--rows", "6"]) == 0
    cal = LookupCalibration.load(out)
    assert cal.source["rows"] == 6 and cal.source["command"].startswith("jetspec fit-lookup --corpus")
    assert sum(map(sum, (c for row in cal.trials for c in row))) > 0
    assert str(out) in capsys.readouterr().out


def test_jetspec_fit_lookup_reports_a_missing_corpus_in_one_line(tmp_path, capsys):
    assert cli_main(["fit-lookup", "--corpus", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jetspec: error:") and "no manifest.json" in err and "\n" not in err
