"""`sampling` tree verifier: lossless speculative sampling at temperature > 0.

Vocabulary: p(. | c) is the target's *warped* next-token distribution after context c —
softmax(logits / temperature), then top-k, then top-p, renormalised (`warp_probs`). A node's
context is the committed prefix plus its ancestors-or-self in the tree; the target's logits at
node i are the logits after that context. A *draw* at node i is a token sampled from p at i.

The rule (walk from the root)
-----------------------------
    node = root
    loop:  x ~ p(. | context(node))
           if node has a child holding x: commit x, node = that child
           else: commit x as the bonus token, stop

Why it is exact, for ANY drafter (deterministic or random, right or wrong): the tree is chosen
before the round's draws, so conditional on the committed prefix x_<t every committed token x_t
is a fresh draw from p(. | x_<t) — whether it lands on a draft (and the walk continues) or not
(and it becomes the bonus). Hence P(x_1..x_n) = prod_t p(x_t | x_<t), which is exactly the law
of plain sampling; the drafter only changes how many tokens one target forward yields. Plain
decoding is the same rule on a root-only tree (one draw per round).

This is multi-draft rejection sampling with point-mass proposals: a draft c proposed with
certainty (q = delta_c) is accepted with probability min(1, p(c)/q(c)) = p(c); on rejection the
residual norm(max(p - q, 0)) is p with c removed, renormalised; the next sibling c' is accepted
with p(c')/(1 - p(c)), and so on. Unrolled over all siblings this is "draw x ~ p, follow the
child holding x", which is how it is implemented.

Why not rejection sampling with the drafter's own probabilities q ("draft_probs", SpecInfer /
recursive rejection sampling)? It accepts more often only when the drafts really are random
draws from q — sibling i drawn from q with siblings < i removed (without replacement), in tree
order — and the verifier needs q over the whole vocabulary at every node to form the residuals
max(p - q, 0). Our trees are chosen deterministically by a tree scorer (top-B by score) from a
proposal that carries only the kept children's log-probs, so the proposal law is a point mass
and the recursive-residual rule collapses to the rule above; applying it with the drafter's
scores as if they were sampling probabilities would be biased. Doing it right needs drafters
that sample their trees and hand [N, V] draft distributions to the verifier (a core interface
change); until one exists, the point-mass rule is the exact choice. A future `draft_probs` mode
would declare `requires={"drafter:draft_probs"}` and the build would refuse drafters without it.

Randomness and reproducibility
------------------------------
The verifier owns a `torch.Generator` (CPU), re-seeded by `reset` at the start of every
`generate`. It turns the seed into one uniform u_t per generated-token index t (a fixed stream,
drawn in chunks), and a draw at a node of depth d in a round that starts at index t0 is the
inverse CDF of that node's p at u_{t0+d}. So every committed token x_t is F^{-1}(u_t; p(. | x_<t)),
and u_t is independent of x_<t (which only depends on u_<t): the rule above, exactly. Nodes at
the same depth share a uniform, which is harmless because the walk visits one node per depth.

* Same seed, same pipeline, same prompt -> same output (on the same device and software).
* A speculative run and a plain run with the same seed are equal IN DISTRIBUTION, not token for
  token. Both use u_t for token t, so they agree exactly as long as the target's logits at a tree
  node are bit-identical to its logits at the same prefix in plain decoding. A real model does
  not guarantee that: the tree pass runs several queries under a tree mask, so its matmuls and
  softmaxes reduce in a different order (fp32: ~1e-6 relative; bf16: far more), and a u_t that
  falls within that distance of a CDF boundary picks a neighbouring token, after which the two
  runs follow different prefixes and decorrelate. (With bit-exact logits — the test suite's
  lookup-table target — they do agree token for token, which the tests use.)
* temperature = 0 is the limit T -> 0: the draw is the argmax, exactly the `greedy` verifier.

Cost: one [N, V] warp and inverse-CDF pass over all nodes (one host sync per round, like
greedy), so no per-depth round trips; the float64 CDF is 8·N·V bytes of scratch.
"""

from __future__ import annotations

import secrets

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core.interfaces import Acceptance, DecodeState
from ..core.on_device import DeviceTree
from ..core.tree import DraftTree
from .greedy import accept_greedy, walk_on_device

_CHUNK = 64  # uniforms are drawn in fixed chunks so the stream u_0, u_1, ... depends on the seed alone


class SamplingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="softmax temperature; 0 = argmax (the greedy verifier)")
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely tokens (None: all)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="keep the smallest most-likely set of mass >= top_p (1: all)")
    seed: int | None = Field(None, ge=0, description="seed, reset at every generate (None: fresh entropy each time)")


def warp_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """logits [N, V] -> probs [N, V] float32, rows summing to 1: softmax(logits / T), keeping only
    the top_k largest logits (ties with the k-th kept), then the smallest set of most likely tokens
    whose mass reaches top_p (the most likely token always stays; equal logits are ordered by
    token id). `temperature` must be > 0 (0 is the argmax, handled by the verifier)."""
    z = logits.float() / temperature  # [N, V]
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]  # [N, 1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True, stable=True)  # [N, V]
        sorted_p = torch.softmax(sorted_z, dim=-1)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # [N, V] mass of strictly likelier tokens
        drop_sorted = mass_before >= top_p  # position 0 has mass_before 0 < top_p: never dropped
        z = z.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return torch.softmax(z, dim=-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """probs [N, V], u [N] in [0, 1) -> tokens [N] int64: the smallest x with CDF(x) > u * total.
    Tokens of probability 0 are never returned (their CDF step is empty)."""
    cdf = torch.cumsum(probs.double(), dim=-1)  # [N, V]
    x = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # [N, 1]
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


class SamplingVerifier:
    def __init__(self, options: SamplingOptions | None = None):
        self.options = options or SamplingOptions()
        self._generator = torch.Generator(device="cpu")
        self._uniforms = torch.empty(0, dtype=torch.float64)  # [drawn so far], u_t for generated index t
        self._seeded = False

    def reset(self, state: DecodeState | None = None, seed: int | None = None) -> None:
        """Start a new sequence: re-seed with `seed`, else the configured seed, else fresh entropy."""
        seed = seed if seed is not None else self.options.seed
        self._generator.manual_seed(secrets.randbits(63) if seed is None else seed)
        self._uniforms = torch.empty(0, dtype=torch.float64)
        self._seeded = True

    def _uniforms_for(self, start: int, stop: int) -> torch.Tensor:
        """u_t for generated indices start <= t < stop: [stop - start] float64."""
        if not self._seeded:
            self.reset()
        while self._uniforms.numel() < stop:
            more = torch.rand(_CHUNK, dtype=torch.float64, generator=self._generator)
            self._uniforms = torch.cat([self._uniforms, more])
        return self._uniforms[start:stop]

    def accept(self, tree: DraftTree, logits: torch.Tensor, state: DecodeState) -> Acceptance:
        """`logits` [N, V]: the target's logits at each node. Returns the walk of the module doc."""
        o = self.options
        if o.temperature == 0.0:
            return accept_greedy(tree, logits.argmax(dim=-1).tolist())
        t0 = len(state.tokens) - state.prompt_len  # generated index of the token drawn at the root
        u = self._uniforms_for(t0, t0 + int(tree.depths.max()) + 1)[tree.depths]  # [N]: u_{t0 + depth}
        probs = warp_probs(logits, o.temperature, o.top_k, o.top_p)  # [N, V]
        draws = inverse_cdf(probs, u.to(probs.device)).tolist()  # [N]; the round's one host sync
        return accept_greedy(tree, draws)

    def accept_on_device(self, tree: DeviceTree, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """`AcceptsOnDevice`: the same draws as `accept` (u_{t0 + depth} at each node), walked on
        the device -> packed [2D + 3] int64. The uniforms go up (D + 1 of them), nothing comes down."""
        o = self.options
        if o.temperature == 0.0:
            return walk_on_device(tree, logits.argmax(dim=-1))
        t0 = len(state.tokens) - state.prompt_len
        u = self._uniforms_for(t0, t0 + tree.max_depth + 1).to(logits.device, non_blocking=True)[tree.depths]  # [N]
        probs = warp_probs(logits, o.temperature, o.top_k, o.top_p)  # [N, V]
        return walk_on_device(tree, inverse_cdf(probs, u))
