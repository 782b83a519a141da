"""A parallel head's drafts scored by measured acceptance (`drafters/head/calibration.py`,
`calibration_fit.py`): the fit counts every candidate of the row below an accepted true path, by
depth, the parent's rank and q — checked against a brute-force reading of that rule; rates are
smoothed, pooled where thin and never fall as q rises; a calibrated draft scores each candidate by
its cell's rate, below a rank-1 parent differently than below a rank-3 one; the `jetspec` drafter
reads the rates beside its head; `jetspec calibrate-head` measures a head's held-out answers; bad
files fail in one line."""

import hashlib
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from head_fixtures import HeadTarget, observed, tiny_corpus, tiny_llama
from jetspec.cli import main as cli_main
from jetspec.core.errors import CheckpointError, InputError
from jetspec.core.proposal import DepthMarginals
from jetspec.drafters.head import HeadOptions, jetspec_drafter, save_head
from jetspec.drafters.head.calibration import BIN_EDGES, BINS, GROUPS, MIN_TRIALS, CalibratedMarginals, HeadCalibration, _non_decreasing
from jetspec.drafters.head.calibration_fit import head_walks
from jetspec.drafters.head.checkpoint import load_head
from jetspec.drafters.head.corpus import load_corpus
from support.models import FAMILIES, tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

SHIPPED = "jetspec/assets/heads/SmolLM2-135M-Instruct/causal"


def q_bin_by_scan(logp):
    q = math.exp(logp)
    return max(b for b in range(BINS) if BIN_EDGES[b] <= q or b == 0)


def brute_force_tally(walks):
    """{(depth, group, bin): [trials, successes]}: a candidate at depth d is a trial when every true
    token above it is in its own row; its group is 0 at depth 1, else 1 + the true parent's rank (<= 3)."""
    tally = {}
    for logp, tokens, truth in walks:
        for d in range(min(len(logp), len(truth))):
            if not all(truth[e] in tokens[e] for e in range(d)):
                break
            g = 0 if d == 0 else min(1 + tokens[d - 1].index(truth[d - 1]), 3)
            for lp, t in zip(logp[d], tokens[d]):
                cell = tally.setdefault((d, g, q_bin_by_scan(lp)), [0, 0])
                cell[0] += 1
                cell[1] += t == truth[d]
    return tally


@st.composite
def walks(draw):
    depths, k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    out = []
    for _ in range(draw(st.integers(1, 12))):
        tokens = [draw(st.permutations(range(6)))[:k] for _ in range(depths)]
        logp = [sorted((draw(st.floats(-9.0, 0.0)) for _ in range(k)), reverse=True) for _ in range(depths)]
        out.append((logp, tokens, draw(st.lists(st.integers(0, 5), max_size=depths))))
    return depths, out


@settings(max_examples=60, deadline=None)
@given(walks())
def test_the_fit_counts_each_candidate_below_an_accepted_true_path_by_depth_parent_rank_and_q(case):
    depths, drawn = case
    cal = HeadCalibration.fit(drawn, depths)
    want = brute_force_tally(drawn)
    for d in range(depths):
        for g in range(GROUPS):
            for b in range(BINS):
                assert (cal.trials[d][g][b], cal.successes[d][g][b]) == tuple(want.get((d, g, b), [0, 0]))


def test_rates_are_smoothed_pooled_where_thin_and_never_fall_as_q_rises():
    trials = [[[100] * BINS for _ in range(GROUPS)] for _ in range(2)]
    successes = [[[5 * b + 1 for b in range(BINS)] for _ in range(GROUPS)] for _ in range(2)]  # rate (5 b + 2) / 102
    trials[1][3][9], successes[1][3][9] = 48, 23  # measured: (23 + 1) / (48 + 2)
    trials[1][2][9], successes[1][2][9] = MIN_TRIALS - 1, 0  # too thin: the bin's rate over all groups
    trials[0][2][13], trials[0][1][13], trials[0][0][13], trials[0][3][13] = 0, 0, 0, MIN_TRIALS - 1  # thin over all: centre q
    cal = HeadCalibration.from_counts(2, trials, successes)
    assert cal.rates[1][3][9] == pytest.approx(24 / 50)
    assert cal.rates[1][2][9] == pytest.approx((46 + 46 + 0 + 23 + 1) / (100 + 100 + 29 + 48 + 2))
    assert cal.rates[0][2][13] == pytest.approx((0.9 + 1.0) / 2)
    assert cal.rates[1][1][12] == pytest.approx(62 / 102)
    for rows in cal.rates:
        for row in rows:
            assert all(0 < r < 1 for r in row) and row == sorted(row)


def test_a_row_that_falls_as_q_rises_is_pooled_into_its_weighted_mean():
    assert _non_decreasing([0.2, 0.6, 0.4, 0.8], [1, 1, 1, 1]) == pytest.approx([0.2, 0.5, 0.5, 0.8])
    assert _non_decreasing([0.5, 0.1], [3, 1]) == pytest.approx([0.4, 0.4])
    assert _non_decreasing([0.1, 0.2, 0.3], [5, 1, 9]) == [0.1, 0.2, 0.3]


def distinct(depths):
    """Every cell its own rate, rising with q: rate = (1 + 100 d + 10 g + 0.5 b) / 1000."""
    rates = [[[(1 + 100 * d + 10 * g + 0.5 * b) / 1000 for b in range(BINS)] for g in range(GROUPS)] for d in range(depths)]
    zeros = [[[0] * BINS for _ in range(GROUPS)] for _ in range(depths)]
    return HeadCalibration(depths, rates, zeros, zeros)


def test_a_calibrated_draft_scores_each_candidate_by_its_cell_below_its_parents_rank():
    tokens = torch.tensor([[7, 3, 9], [4, 8, 6], [1, 2, 5]])  # [D = 3, K = 3], rows by q
    logp = torch.log(torch.tensor([[0.85, 0.12, 0.001], [0.55, 0.15, 0.03], [0.5, 0.3, 0.2]]))
    p = distinct(2).marginals(tokens, logp)
    score = lambda d, g, b: math.log((1 + 100 * d + 10 * g + 0.5 * b) / 1000)  # noqa: E731
    assert p.children(()) == ((7, score(0, 0, 12)), (3, score(0, 0, 5)), (9, score(0, 0, 0)))
    assert p.children((7,)) == ((4, score(1, 1, 9)), (8, score(1, 1, 5)), (6, score(1, 1, 3)))  # below rank 1
    assert p.children((3,)) == ((4, score(1, 2, 9)), (8, score(1, 2, 5)), (6, score(1, 2, 3)))  # below rank 2
    assert p.children((9,)) == p.children((42,)) == tuple((t, score(1, 3, b)) for t, b in ((4, 9), (8, 5), (6, 3)))
    assert p.children((7, 4)) == tuple(zip([1, 2, 5], logp[2].tolist()))  # a depth not measured: raw log q
    assert p.children((7, 4, 1)) == ()


@settings(max_examples=20, deadline=None)
@given(slots=st.integers(1, 6), depths=st.integers(1, 4), measured=st.integers(1, 4), k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_a_pooled_steps_drafts_calibrated_together_give_each_member_the_proposal_it_makes_alone(slots, depths, measured, k, seed):
    """`PooledDrafts` calibrates a batch's drafts in one pass of array ops; member s must read
    exactly the rows `marginals` makes from its own draft alone, below every parent rank."""
    from jetspec.drafters.head.pool import PooledDrafts

    g = torch.Generator().manual_seed(seed)
    logp, tokens = torch.randn(slots, depths, 50, generator=g).log_softmax(-1).topk(k, dim=-1)  # [S, D, k] each
    host = torch.stack([logp, tokens.float()], dim=1)  # [S, 2, D, k]: as the pool copies them
    calibration, pooled = distinct(measured), PooledDrafts(host)
    for s in range(slots):
        alone, together = calibration.marginals(tokens[s], logp[s]), pooled.marginals(calibration, s)
        paths = [()] + [(t,) for t in tokens[s, 0].tolist() + [999]]  # every parent rank, and a path the head did not draft
        if depths > 1:
            paths += [(tokens[s, 0, 0].item(), t) for t in tokens[s, 1].tolist()[:2]]
        for path in paths:
            assert together.children(path) == alone.children(path), (s, path)


def test_a_calibration_file_round_trips(tmp_path):
    cal = distinct(3)
    cal.source = {"command": "jetspec calibrate-head ..."}
    back = HeadCalibration.load(cal.save(tmp_path / "head_rates.json"))
    assert (back.depths, back.rates, back.source) == (3, cal.rates, cal.source)


GOOD = {"format": "jetspec-head-calibration/1", "depths": 1, "groups": GROUPS, "bin_edges": list(BIN_EDGES)}


@pytest.mark.parametrize("body,expected", [
    ("not json", "cannot be read as JSON"),
    (json.dumps({"format": "other"}), "not a jetspec-head-calibration/1 file"),
    (json.dumps({**GOOD, "depths": "x", "rates": []}), "malformed"),
    (json.dumps({**GOOD, "rates": [[[0.5] * BINS] * (GROUPS - 1)]}), "rates must be"),
    (json.dumps({**GOOD, "bin_edges": [0, 1], "rates": [[[0.5] * BINS] * GROUPS]}), "rates must be"),
    (json.dumps({**GOOD, "rates": [[[1.0] * BINS] * GROUPS]}), "every rate must lie in"),
])  # fmt: skip
def test_a_bad_calibration_file_is_one_line_naming_it(tmp_path, body, expected):
    path = tmp_path / "head_rates.json"
    path.write_text(body)
    with pytest.raises(InputError, match=expected) as e:
        HeadCalibration.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_the_jetspec_drafter_scores_its_head_with_the_rates_beside_it(tmp_path):
    target = HeadTarget(tiny_llama())
    folder = tmp_path / "head"
    save_head(jetspec_drafter(HeadOptions(checkpoint="random", block_size=4), target).head, folder, dtype=torch.float32)
    tokens = [5, 17, 33, 8, 61, 12, 40, 9]

    def proposal(**options):
        options = {"head_calibration": True, **options}
        drafter = jetspec_drafter(HeadOptions(checkpoint=str(folder), lookup=False, top_k=3, **options), target)
        return drafter.propose(observed(drafter, target, tokens), budget=16)

    raw = proposal()
    assert isinstance(raw, DepthMarginals)  # no head_rates.json: the head's log q
    distinct(3).save(folder / "head_rates.json")
    calibrated = proposal()
    assert isinstance(calibrated, CalibratedMarginals)
    assert {t for t, _ in calibrated.children(())} == {t for t, _ in raw.children(())}
    assert all(math.log(0.001) <= s <= math.log(0.008) for _, s in calibrated.children(()))  # depth 1, root group
    assert isinstance(proposal(head_calibration=False), DepthMarginals)
    assert jetspec_drafter(HeadOptions(checkpoint=str(folder)), target).calibration is None  # off by default
    other = distinct(3)
    other.source = {"head_sha256": "0" * 64}  # measured for other weights
    other.save(folder / "head_rates.json")
    with pytest.raises(CheckpointError, match="was measured for other weights"):
        proposal()
    distinct(5).save(folder / "head_rates.json")  # measured for a head of another depth
    with pytest.raises(CheckpointError, match="has 5 depths, the head drafts 3"):
        proposal()


def test_the_shipped_rates_were_measured_for_the_shipped_head():
    cal = HeadCalibration.load(f"{SHIPPED}/head_rates.json")
    head = json.loads(open(f"{SHIPPED}/head.json").read())
    assert cal.source["target_fingerprint"] == head["target_fingerprint"] and cal.depths == head["block_size"] - 1
    assert cal.source["head_sha256"] == hashlib.sha256(open(f"{SHIPPED}/head.safetensors", "rb").read()).hexdigest()
    assert cal.source["rows"] >= 200 and sum(cal.trials[0][0]) > 10_000


def test_head_walks_reach_the_answers_next_tokens_and_stop_where_the_text_is_not_the_targets_choice(tmp_path):
    prompts = [f"Tom has {i} apples and {i} pears. How many?" for i in range(8)]
    _, model, _, corpus = tiny_corpus(tmp_path, prompts, rows=8, chunk=8)
    data = load_corpus(corpus)
    row = next(s for s in range(len(data)) if float(data.columns["temperature"][s]) == 0 and len(data.row(s)) - int(data.prompt_lens[s]) >= 6)
    ids, start = data.row(row).tolist(), int(data.prompt_lens[row])
    head = jetspec_drafter(HeadOptions(checkpoint="random", block_size=4), HeadTarget(model)).head
    walks = list(head_walks(head, model, data, [row], top_k=2))
    assert len(walks) == len(ids) - start  # anchors: the prompt's last token .. the last but one
    for a, (logp, tokens, truth) in enumerate(walks, start - 1):
        assert len(logp) == len(tokens) == 3 and all(len(r) == 2 for r in tokens)
        assert truth == ids[a + 1 : a + 4]  # a greedy answer: the target's own choices
    ids[start + 2] = (ids[start + 2] + 1) % 96  # no longer what the target would write there
    data.tokens[int(data.offsets[row]) + start + 2] = ids[start + 2]
    walks = list(head_walks(head, model, data, [row], top_k=2))
    assert [w[2] for w in walks[:3]] == [ids[start : start + 2], ids[start + 1 : start + 2], []]


def test_jetspec_calibrate_head_writes_the_rates_beside_the_head_and_records_its_command(tmp_path, capsys):
    prompts = [f"Tom has {i} apples and {i} pears. How many?" for i in range(12)]
    folder, model, _, corpus = tiny_corpus(tmp_path, prompts, rows=24, chunk=24)
    head_dir = tmp_path / "head"
    save_head(jetspec_drafter(HeadOptions(checkpoint="random", block_size=4), HeadTarget(model)).head, head_dir, dtype=torch.float32)
    assert cli_main(["calibrate-head", "--head", str(head_dir), "--corpus", str(corpus), "--target", str(folder), "--rows", "2"]) == 0
    cal = HeadCalibration.load(head_dir / "head_rates.json")
    assert cal.depths == load_head(head_dir).config.block_size - 1 == 3
    assert cal.source["rows"] == 2 and cal.source["command"].startswith("jetspec calibrate-head --head")
    assert cal.source["head_sha256"] == hashlib.sha256((head_dir / "head.safetensors").read_bytes()).hexdigest()
    assert sum(cal.trials[0][0]) > 0 and str(head_dir) in capsys.readouterr().out


def test_jetspec_calibrate_head_reports_a_missing_head_in_one_line(tmp_path, capsys):
    assert cli_main(["calibrate-head", "--head", str(tmp_path / "none"), "--corpus", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jetspec: error:") and "\n" not in err


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(FAMILIES), prompt=st.lists(st.integers(3, 60), min_size=1, max_size=16),
       budget=st.integers(1, 40), lookup=st.booleans())
def test_a_calibrated_head_drafts_losslessly(tmp_path_factory, family, prompt, budget, lookup):
    target = tiny_target(family, 0)
    folder = tmp_path_factory.mktemp("head")
    save_head(jetspec_drafter(HeadOptions(checkpoint="random", block_size=5), target).head, folder, dtype=torch.float32)
    distinct(4).save(folder / "head_rates.json")
    pipe = (jetspec.builder(make_test_registry()).target(target).drafter("jetspec", checkpoint=str(folder), lookup=lookup, head_calibration=True)
            .generation(budget=budget, max_new_tokens=20).build())  # fmt: skip
    assert isinstance(pipe.drafter.calibration, HeadCalibration)
    assert tuple(pipe.generate(list(prompt)).tokens) == plain_output(family, 0, tuple(prompt), 20)
