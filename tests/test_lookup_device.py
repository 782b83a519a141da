"""The prompt lookup on the device (`drafters/lookup_device.py`): from token histories alone, in array
operations of fixed shapes, each sequence's trie is the host lookup's (`NgramDrafter.propose_flat`,
packed by `pack_tries`) entry for entry — tokens, parents, depths and float32 log-probs, calibrated or
not — and padding after it."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.device_proposal import PAD_PARENT, pack_tries
from jetspec.core.interfaces import DecodeState
from jetspec.drafters.head.drafter import SHIPPED
from jetspec.drafters.lookup_calibration import LookupCalibration
from jetspec.drafters.lookup_device import edge_tables, log_ratios, lookup_tries
from jetspec.drafters.ngram import NgramDrafter, NgramOptions

CALIBRATION = LookupCalibration.load(SHIPPED / "SmolLM2-135M-Instruct" / "causal" / "lookup.json")


@st.composite
def histories(draw):
    """S sequences over a small vocabulary (many repeats: many matches), of lengths 1 .. C."""
    s, c, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 48)), draw(st.integers(1, 6))
    rows = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=c, max_size=c), min_size=s, max_size=s))
    lengths = draw(st.lists(st.integers(1, c), min_size=s, max_size=s))
    return torch.tensor(rows), torch.tensor(lengths)


@settings(max_examples=150, deadline=None)
@given(case=histories(), n_min=st.integers(1, 2), n_max=st.integers(2, 4), matches=st.integers(1, 8),
       max_depth=st.integers(1, 16), budget=st.integers(1, 20), calibrated=st.booleans())
def test_each_sequences_trie_is_the_host_lookups_entry_for_entry(case, n_min, n_max, matches, max_depth, budget, calibrated):
    history, length = case
    options = NgramOptions(n_min=n_min, n_max=n_max, max_matches=matches, max_depth=max_depth)
    calibration = CALIBRATION if calibrated else None
    edges = edge_tables(CALIBRATION, n_max, "cpu") if calibrated else None
    depth = min(max_depth, budget)
    tokens, parents, depths, logp = lookup_tries(history, length, options, depth, log_ratios(matches, "cpu"), edges)
    assert tokens.shape == parents.shape == depths.shape == logp.shape == (history.shape[0], matches * depth)
    assert logp.dtype == torch.float32 and tokens.dtype == parents.dtype == depths.dtype == torch.int64
    for s in range(history.shape[0]):
        state = DecodeState(tokens=history[s, : length[s]].tolist(), prompt_len=1)
        flat = NgramDrafter(options, calibration=calibration).propose_flat(state, budget)
        ints, want_logp, _ = pack_tries([flat])
        n = 0 if flat is None else flat.size
        for got, want in zip((tokens, parents, depths), ints[:, 0]):
            assert got[s, :n].tolist() == want[:n].tolist()
        assert torch.equal(logp[s, :n], torch.from_numpy(want_logp[0, :n]))  # bit for bit
        assert (tokens[s, n:] == 0).all() and (parents[s, n:] == PAD_PARENT).all() and (depths[s, n:] == 0).all()
        assert torch.isneginf(logp[s, n:]).all()


def test_a_sequence_whose_suffix_never_occurred_before_gets_an_empty_trie():
    history, length = torch.tensor([[1, 2, 3, 4], [5, 6, 5, 6]]), torch.tensor([4, 4])
    tokens, parents, depths, logp = lookup_tries(history, length, NgramOptions(), 4, log_ratios(8, "cpu"))
    assert (depths[0] == 0).all() and (parents[0] == PAD_PARENT).all() and torch.isneginf(logp[0]).all()
    assert depths[1, :2].tolist() == [1, 2] and tokens[1, :2].tolist() == [5, 6]  # "5 6" followed the first "5 6"
