"""Calibrated scores for a parallel head (`drafters/head/calibration.py`): the per-depth logistic fit,
which candidates it is fitted on, the file beside the head, and the drafter scoring with it."""

import json

import pytest
import torch

from head_fixtures import HeadTarget, observed, tiny_corpus, tiny_llama
from jetspec.core.errors import CheckpointError, ConfigError
from jetspec.drafters.head import load_head
from jetspec.drafters.head.checkpoint import save_head
from jetspec.drafters.head.corpus import load_corpus
from jetspec.drafters.head.calibration import FILE, Calibration, candidates_and_labels, fit_logistic, main
from jetspec.drafters.head.drafter import HeadDrafter, build_head
from jetspec.drafters.head.options import HeadOptions
from jetspec.drafters.head.train import TrainConfig, train


def test_the_fit_recovers_the_slope_and_bias_that_made_the_labels():
    g = torch.Generator().manual_seed(0)
    x = -4 * torch.rand(40_000, generator=g)  # [S] log-probs
    y = (torch.rand(40_000, generator=g) < torch.sigmoid(1.5 * x + 0.7)).float()
    a, b = fit_logistic(x, y)
    assert abs(a - 1.5) < 0.08 and abs(b - 0.7) < 0.08


def test_depth_d_is_fitted_only_where_the_true_tokens_above_it_are_candidates():
    # 2 anchors, 3 depths, top 2. Anchor 0: the truth is a candidate at every depth; anchor 1 misses depth 1.
    tokens = torch.tensor([[[5, 6], [7, 8], [9, 4]], [[5, 6], [7, 8], [9, 4]]])  # [S=2, D=3, K=2]
    logp = -torch.arange(12, dtype=torch.float32).reshape(2, 3, 2) / 10
    truth = torch.tensor([[6, 7, 4], [1, 8, 9]])  # [S, D]
    valid = torch.tensor([[True, True, True], [True, True, False]])
    (x1, y1), (x2, y2), (x3, y3) = candidates_and_labels(logp, tokens, truth, valid)
    assert y1.tolist() == [0, 1, 0, 0] and x1.tolist() == logp[:, 0].reshape(-1).tolist()  # depth 1: both anchors
    assert y2.tolist() == [1, 0] and x2.tolist() == logp[0, 1].tolist()  # depth 2: anchor 1 lost its path at depth 1
    assert y3.tolist() == [0, 1]  # depth 3: anchor 0 only (anchor 1 is invalid there anyway)


def test_calibrated_scores_keep_each_depths_order_and_are_log_probabilities():
    cal = Calibration(slope=(2.0, 0.5), bias=(1.0, -0.5))
    logp = torch.tensor([[-0.1, -1.0, -3.0], [-0.2, -0.4, -2.0]])  # [D, K] sorted descending
    out = cal.apply(logp)
    assert out.shape == logp.shape and bool((out <= 0).all())
    assert bool((out[:, :-1] >= out[:, 1:]).all())  # order within a depth kept (slopes > 0)
    assert torch.allclose(out[1, 0], torch.nn.functional.logsigmoid(torch.tensor(0.5 * -0.2 - 0.5)))
    with pytest.raises(CheckpointError, match="covers 2 depths"):
        cal.apply(torch.zeros(3, 3))


def test_a_missing_or_broken_calibration_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="no calibration.json; make it with python -m jetspec.drafters.head.calibration"):
        Calibration.load(tmp_path)
    (tmp_path / FILE).write_text(json.dumps({"slope": [1.0, -1.0], "bias": [0.0, 0.0]}))
    with pytest.raises(CheckpointError, match="one positive slope per depth"):
        Calibration.load(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    prompts = [f"Ann has {i} apples and buys {i + 4} more; how many now?" for i in range(40)]
    folder, model, identity, corpus = tiny_corpus(root, prompts, rows=80)
    cfg = TrainConfig(kind="causal", steps=3, batch_size=8, anchors=4, block_size=5, eval_rows=8, layers=1, save_every=1000)
    train(model, load_corpus(corpus), root / "head", cfg, identity, progress=False)
    return folder, corpus, root / "head"


def test_the_command_writes_a_calibration_of_every_drafted_depth_beside_the_head(trained, capsys):
    folder, corpus, head_dir = trained
    main(["--checkpoint", str(head_dir), "--target", str(folder), "--corpus", str(corpus), "--rows", "8", "--anchors", "4"])
    saved = json.loads((head_dir / FILE).read_text())
    depths = load_head(head_dir).config.block_size - 1
    assert len(saved["slope"]) == len(saved["bias"]) == depths == len(saved["samples_by_depth"])
    assert saved["questions"] == 8 and saved["command"].startswith("python -m jetspec.drafters.head.calibration")
    assert saved["samples_by_depth"][0] == 8 * 4 * 8  # depth 1: every anchor's top 8
    assert "wrote" in capsys.readouterr().out


def test_the_drafter_proposes_the_calibrated_scores_of_the_same_candidates(tmp_path):
    target = HeadTarget(tiny_llama())
    head = build_head(HeadOptions(checkpoint="random", block_size=4), target, "causal")
    save_head(head, tmp_path)
    cal = Calibration(slope=(1.5, 1.0, 0.5), bias=(0.5, 0.0, -0.5))
    cal.save(tmp_path, {})
    plain = HeadDrafter(head, target, HeadOptions(checkpoint=str(tmp_path), lookup=False, cuda_graphs=False))
    calibrated = HeadDrafter(head, target, HeadOptions(checkpoint=str(tmp_path), lookup=False, cuda_graphs=False, calibrated=True))
    tokens = [3, 9, 4, 7, 11]
    rows = []
    for drafter in (plain, calibrated):
        state = observed(drafter, target, tokens)
        proposal = drafter.propose(state, 8)
        rows.append([proposal.children((0,) * d) for d in range(3)])
    for d, (raw, scored) in enumerate(zip(*rows)):
        assert [t for t, _ in raw] == [t for t, _ in scored]  # the same candidates, in the same order
        expected = cal.apply(torch.tensor([[lp for _, lp in raw]] * (d + 1)))[d]
        assert [lp for _, lp in scored] == pytest.approx(expected.tolist(), abs=1e-6)


def test_calibrated_needs_a_calibration_of_every_depth_the_head_drafts(tmp_path):
    target = HeadTarget(tiny_llama())
    head = build_head(HeadOptions(checkpoint="random", block_size=5), target, "causal")
    save_head(head, tmp_path)
    Calibration(slope=(1.0, 1.0), bias=(0.0, 0.0)).save(tmp_path, {})
    with pytest.raises(ConfigError, match="covers 2 depths; the head drafts 4"):
        HeadDrafter(head, target, HeadOptions(checkpoint=str(tmp_path), lookup=False, cuda_graphs=False, calibrated=True))
