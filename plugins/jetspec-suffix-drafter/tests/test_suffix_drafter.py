"""The suffix drafter: the automaton agrees with brute force, and the drafter passes JetSpec's
conformance kit (protocol + lossless) when discovered through its entry point."""

from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core.interfaces import DecodeState
from jetspec.testing import check_drafter
from jetspec_suffix_drafter import SuffixAutomaton, SuffixDrafter, SuffixOptions

sequences = st.lists(st.integers(0, 3), max_size=60)  # a 4-token alphabet: many repeats


def brute_longest_earlier(s):
    """max L such that s[n-L:] also ends at some e < n - 1."""
    n = len(s)
    return max((L for L in range(n) for e in range(L - 1, n - 1) if s[e - L + 1 : e + 1] == s[n - L :]), default=0)


@settings(max_examples=200, deadline=None)
@given(sequences)
def test_the_automaton_finds_the_longest_earlier_match_after_every_token(s):
    sam = SuffixAutomaton()
    for i, t in enumerate(s):
        sam.extend(t)
        prefix = s[: i + 1]
        v = sam.longest_earlier_match()
        assert sam.length[v] == brute_longest_earlier(prefix)
        L = sam.length[v]
        if L:  # its end positions: every e where the length-L suffix ends, the current end included
            want = {e for e in range(L - 1, i + 1) if prefix[e - L + 1 : e + 1] == prefix[i + 1 - L :]}
            assert set(sam.end_positions(v, 10**6)) == want


@settings(max_examples=100, deadline=None)
@given(sequences, st.integers(1, 4))
def test_matches_are_longest_first_and_exact(s, max_matches):
    d = SuffixDrafter(SuffixOptions(max_matches=max_matches))
    found = d.matches(s)
    assert len(found) <= max_matches
    assert [L for _, L in found] == sorted((L for _, L in found), reverse=True)
    for e, L in found:  # s[..e] ends with the last L tokens of s, and not with the last L + 1
        assert e < len(s) - 1 and s[e - L + 1 : e + 1] == s[len(s) - L :]
        assert e - L < 0 or L == len(s) or s[e - L] != s[len(s) - L - 1]
    if s:
        assert (found[0][1] if found else 0) == brute_longest_earlier(s)


def test_a_long_repeat_is_matched_whole_and_its_continuation_ranks_first():
    s = [7, 1, 2, 3, 4, 5, 9, 0, 0, 1, 2, 3, 4, 5, 8, 2, 3, 4, 5]  # "2 3 4 5" seen twice, "1 2 3 4 5" too
    d = SuffixDrafter(SuffixOptions(length_weight=2.0))
    assert d.matches(s)[:2] == [(13, 4), (5, 4)]
    trie = d.propose(DecodeState(tokens=s, prompt_len=len(s)), budget=8)
    assert [t for t, _ in trie.children(())] == [8, 9]  # both follow a length-4 match; the most recent first on ties
    assert trie.children(())[0][1] == trie.children(())[1][1]


def test_the_drafter_is_discovered_through_its_entry_point():
    reg = jetspec.default_registry(refresh=True)
    assert reg.get("drafter", "suffix").plugin == "suffix-drafter"


def test_the_drafter_conforms():
    check_drafter("suffix", examples=15)
    check_drafter("suffix", options={"length_weight": 0.0, "max_matches": 2, "max_depth": 3}, examples=10)
