"""Checks of the device build's two capabilities (`core/device_proposal.py`), one line naming the
component when they fail:

* scorer `build_on_device` (`BuildsOnDevice`, where the engine would call it: `builds_on_device`):
  on random step proposals (per-depth rows merged with tries, distinct scores), the block is
  [7, S * N] int64, every tree reads back as a valid tree of budget + 1 nodes (`host_trees`, the
  engine's own check) whose nodes are exactly those `build` picks from the same proposal;
* drafter `propose_on_device` (`ProposesOnDevice`): what it returns in the kit's batched runs is
  a `DeviceProposal` of int64 tokens in the vocabulary and float log-probs [D, K] on the target's
  device, each row's tokens distinct and sorted by log-prob, its trie a well-formed proposal
  (`CheckedOnDevice`, the drafter proxy's member).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from ..core.batch_grow import host_trees
from ..core.device_proposal import PAD_PARENT, DeviceProposal, DeviceProposals, DeviceTrie, FlatTrie, builds_on_device, pack_tries
from ..core.proposal import DepthMarginals, MergedProposal, TokenTrie
from .subject import Subject, run_property


@st.composite
def step_proposals(draw: Any, vocab: int, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[TokenTrie | None]]:
    """S sequences' proposals: rows [S, D, K] (distinct tokens, sorted log-probs) and a
    prompt-lookup-like trie each, or none. Log-probs distinct (continuous) unless `ties` (0, -1, -2)."""
    s, d, k = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 1 << 30)))
    tokens = np.stack([[rng.permutation(vocab)[:k] for _ in range(d)] for _ in range(s)])  # [S, D, K]
    raw = rng.integers(0, 3, (s, d, k)).astype(float) if ties else rng.exponential(2.0, (s, d, k))
    logp = -np.sort(raw, axis=-1).astype(np.float32)  # [S, D, K] rows descending
    tries: list[TokenTrie | None] = []
    for _ in range(s):
        if draw(st.booleans()):
            tries.append(None)
            continue
        trie = TokenTrie()
        for _ in range(draw(st.integers(1, 3))):
            n = int(rng.integers(1, 8))
            lp = -rng.integers(0, 3, n).astype(float) if ties else -rng.exponential(1.0, n)
            trie.add_sequence(rng.integers(0, vocab, n).tolist(), lp.tolist())
        tries.append(trie)
    return torch.from_numpy(tokens).long(), torch.from_numpy(logp), tries


def device_proposals(tokens: torch.Tensor, logp: torch.Tensor, tries: list[TokenTrie | None], device: str = "cpu") -> DeviceProposals:
    """`step_proposals`' rows [S, D, K] and host tries as `DeviceProposals` on `device` (the tries packed
    as the engine packs them, `pack_tries`)."""
    ints, trie_logp, deepest = pack_tries([None if t is None else FlatTrie.of(t) for t in tries])
    return DeviceProposals(tokens.to(device), logp.to(device), *(torch.from_numpy(x).to(device) for x in (ints[0], ints[1], trie_logp, ints[2])),
                           deepest)


def check_builds_on_device(s: Subject, scorer: Any, vocab: int, examples: int, seed: int | None, shrink: bool = True,
                           device: str = "cpu") -> None:
    if not builds_on_device(scorer):
        return

    @given(case=step_proposals(vocab), budget=st.integers(1, 24))
    def device_trees_are_the_host_trees(case, budget):
        tokens, logp, tries = case
        p = device_proposals(tokens, logp, tries, device)
        roots, prefixes = torch.arange(p.size) + 1, torch.arange(p.size) * 3
        where = f" (budget {budget}, rows {tuple(tokens.shape)}, trie sizes {[len(t.children(())) if t else 0 for t in tries]})"
        with s.calling("build_on_device", where):
            made = scorer.build_on_device(p, roots.to(device), prefixes.to(device), budget)
        if made is None:
            return
        n = budget + 1
        block = made.block if isinstance(getattr(made, "block", None), torch.Tensor) else None
        if block is None or block.shape != (7, p.size * n) or block.dtype != torch.int64:
            s.fail("build_on_device", f"returned {type(made).__name__} without a [7, {p.size * n}] int64 block{where}")
        trees = host_trees(block.cpu().numpy().reshape(-1), n, roots.tolist(), prefixes.tolist(), vocab, s.label)
        for i, tree in enumerate(trees):
            if not hasattr(tree, "tokens"):
                s.fail("build_on_device", f"{tree}{where}")
            marginals = DepthMarginals(tokens[i], logp[i])
            proposal = marginals if tries[i] is None else MergedProposal(marginals, tries[i])
            with s.calling("build", where):
                host = scorer.build(proposal, int(roots[i]), budget)
            mine, theirs = _paths(tree), _paths(host)
            if mine != theirs:
                extra, missing = sorted(mine - theirs)[:2], sorted(theirs - mine)[:2]
                s.fail("build_on_device", f"sequence {i}'s device tree has paths {extra} that build leaves out and lacks "
                                          f"{missing}{where}")

    run_property(device_trees_are_the_host_trees, examples, seed, shrink)


def _paths(tree: Any) -> set[tuple[int, ...]]:
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    out = set()
    for i in range(1, len(tokens)):
        path, j = [], i
        while j > 0:
            path.append(tokens[j])
            j = parents[j]
        out.add(tuple(path[::-1]))
    return out


def checked_device_proposal(s: Subject, p: Any, vocab: int, device: torch.device | None, where: str) -> None:
    """A `propose_on_device` result's form, or a one-line failure naming the drafter."""
    if not isinstance(p, DeviceProposal):
        s.fail("propose_on_device", f"returned {type(p).__name__}; expected a DeviceProposal or None{where}")
    tokens, logp = p.tokens, p.logp
    if not (isinstance(tokens, torch.Tensor) and isinstance(logp, torch.Tensor) and tokens.dim() == 2 and tokens.shape == logp.shape
            and tokens.dtype == torch.int64 and logp.is_floating_point() and tokens.shape[0] >= 1):
        s.fail("propose_on_device", f"returned rows {getattr(tokens, 'shape', None)} / {getattr(logp, 'shape', None)}; expected int64 "
                                    f"tokens and float log-probs of one shape [D >= 1, K]{where}")
    if device is not None and tokens.device != device:
        s.fail("propose_on_device", f"returned rows on {tokens.device}; expected them on the target's device {device}{where}")
    t, lp = tokens.cpu(), logp.float().cpu()
    if bool(((t < 0) | (t >= vocab)).any()):
        s.fail("propose_on_device", f"proposes token ids outside [0, {vocab}){where}")
    if bool(lp.isnan().any()) or bool((lp > 0).any()):
        s.fail("propose_on_device", f"proposes a log-prob that is NaN or above 0; log-probs must be <= 0{where}")
    if t.shape[1] > 1 and (bool((lp[:, 1:] > lp[:, :-1]).any()) or bool((t.sort(dim=1).values.diff(dim=1) == 0).any())):
        s.fail("propose_on_device", f"rows must hold distinct tokens sorted by log-prob, descending{where}")
    problem = (None if p.trie is None else p.trie.problem(vocab) if isinstance(p.trie, FlatTrie)
               else device_trie_problem(p.trie, vocab) if isinstance(p.trie, DeviceTrie) else "neither a FlatTrie nor a DeviceTrie")
    if problem:
        s.fail("propose_on_device", f"returned a trie that is wrong: {problem}{where}")


def device_trie_problem(t: DeviceTrie, vocab: int) -> str | None:
    """What makes a `DeviceTrie` no trie (read back: a test may wait for the device): its real entries
    (depth >= 1) as a `FlatTrie`, parents among them; padding (depth 0) with parent PAD_PARENT; no
    depth above `depth`."""
    tokens, parents, depths, logp = (x.cpu() for x in (t.tokens, t.parents, t.depths, t.logp.float()))
    real = depths >= 1
    if bool((parents[~real] != PAD_PARENT).any()):
        return "a padding entry (depth 0) whose parent is not PAD_PARENT"
    if bool((depths > t.depth).any()):
        return f"an entry deeper than its depth bound {t.depth}"
    at = torch.cumsum(real.long(), 0) - 1  # a real entry's index among the real ones
    par = parents[real]
    ok = (par == -1) | ((par >= 0) & (par < len(parents)))
    if not bool(ok.all()) or bool(((par >= 0) & ~real[par.clamp(0, len(parents) - 1)]).any()):
        return "a DeviceTrie entry's parent is neither -1 nor a real entry"
    flat = FlatTrie(tokens[real].tolist(), torch.where(par >= 0, at[par.clamp(min=0)], -1).tolist(), logp[real].tolist(),
                    depths[real].tolist())
    return flat.problem(vocab)
