"""`best_first_kernel.grow_kernel`: the device build in one Triton launch writes exactly the torch
form's trees (`best_first_device.grow`) — the same block, bit for bit, wherever scores do not tie
(hypothesis over the kit's step proposals: rows, tries, budgets, depth caps); with ties, valid
trees of the same scores. Runs in Triton's interpreter on the CPU, compiled on CUDA."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.batch_grow import host_trees
from jetspec.core.invariant import interpreted
from jetspec.scorers.best_first_device import fills, grow
from jetspec.scorers.best_first_kernel import grow_kernel
from jetspec.testing.device_build import device_proposals, step_proposals

VOCAB = 20
# CPU tensors run the kernel in Triton's interpreter only (TRITON_INTERPRET=1); CUDA tensors compiled
DEVICES = (["cpu"] if interpreted() or not torch.cuda.is_available() else []) + (["cuda"] if torch.cuda.is_available() else [])


def device_form(case, device):
    return device_proposals(*case, device)


def both(p, budget, max_depth):
    roots, prefixes = torch.arange(p.size, device=p.tokens.device) + 7, torch.arange(p.size, device=p.tokens.device) * 5 + 3
    return grow(p, roots, prefixes, budget, max_depth), grow_kernel(p, roots, prefixes, budget, max_depth), roots, prefixes


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(case=step_proposals(VOCAB), budget=st.integers(1, 24), max_depth=st.sampled_from([None, 2, 4]))
def test_the_kernel_writes_the_torch_forms_block_where_scores_do_not_tie(device, case, budget, max_depth):
    p = device_form(case, device)
    if not fills(p, budget, max_depth):
        return
    torch_form, kernel, _, _ = both(p, budget, max_depth)
    assert (kernel.nodes, kernel.max_depth) == (torch_form.nodes, torch_form.max_depth)
    assert torch.equal(kernel.block, torch_form.block)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(case=step_proposals(VOCAB, ties=True), budget=st.integers(1, 16))
def test_with_ties_the_kernel_writes_valid_trees_of_the_same_scores(device, case, budget):
    p = device_form(case, device)
    if not fills(p, budget):
        return
    torch_form, kernel, roots, prefixes = both(p, budget, None)
    n = budget + 1
    made = host_trees(kernel.block.cpu().numpy().reshape(-1), n, roots.tolist(), prefixes.tolist(), VOCAB, "kernel")
    assert all(not isinstance(t, Exception) for t in made)
    tokens, logp, tries = case
    want = host_trees(torch_form.block.cpu().numpy().reshape(-1), n, roots.tolist(), prefixes.tolist(), VOCAB, "torch")
    assert [sorted(path_scores(t, tokens[s], logp[s], tries[s])) for s, t in enumerate(made)] == \
           [sorted(path_scores(t, tokens[s], logp[s], tries[s])) for s, t in enumerate(want)]


def path_scores(tree, tokens, logp, trie):
    """Every node's score: the sum of its path's merged edge log-probs (row d's, or the trie's, the larger)."""
    toks, parents = tree.tokens.tolist(), tree.parents.tolist()
    score, path = [0.0], [()]
    for i in range(1, tree.size):
        p = path[parents[i]]
        d = len(p)
        row = dict(zip(tokens[d].tolist(), logp[d].tolist())) if d < tokens.shape[0] else {}
        edge = max([row.get(toks[i], -np.inf)] + [lp for t, lp in (trie.children(p) if trie else ()) if t == toks[i]])
        path.append(p + (toks[i],))
        score.append(score[parents[i]] + max(edge, -1e20))
    return [round(x, 4) for x in score]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows_depth", [1, 2, 3])
def test_a_deep_lookup_path_below_the_rows_is_kept_whole_as_the_torch_form_keeps_it(device, rows_depth):
    from jetspec.core.proposal import TokenTrie

    row = [-3.0 - k for k in range(8)]
    tokens = torch.tensor([[[14, 15, 16, 17, 1, 2, 3, 4]] * rows_depth, [[14, 15, 16, 17, 4, 5, 6, 1]] * rows_depth])  # [2, D, 8]
    logp = torch.tensor([[row] * rows_depth] * 2)
    deep, side = TokenTrie(), TokenTrie()
    deep.add_sequence([7, 8, 9, 10, 11, 12, 13], [-0.011, -0.012, -0.013, -0.014, -0.015, -0.016, -0.017])
    side.add_sequence([9, 9, 9, 9, 9], [-0.021, -0.022, -0.023, -0.024, -0.025])
    p = device_form((tokens, logp, [deep, side]), device)
    assert fills(p, 8)
    torch_form, kernel, _, _ = both(p, 8, None)
    assert torch.equal(kernel.block, torch_form.block)
    assert kernel.block[2].max().item() == 7  # the whole path: depth 7, four levels below the rows at most
