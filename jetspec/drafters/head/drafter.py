"""`HeadDrafter`: the parallel draft head as a `Drafter` (registered as `jetspec`; `dflash` is the
same code with a bidirectional block).

propose(), one head forward:
    inputs  [anchor=root, MASK x (B-1)] at positions [a, a+1, ..., a+B-1], a = committed context
    slot d -> log q_d(.) = log_softmax(LM_head(h_d)),  d = 1..B-1
    Proposal = DepthMarginals: children of any path of length d = top-k of q_{d+1}.

With `rescore = true`, a second forward conditions every child on its actual parent:
    candidate tree = accum-logp over the marginals (rescore_factor x budget nodes)
    inputs  [tree nodes, embedded drafted tokens (root = anchor) ; one MASK per node n at depth(n)+1]
    node n sees its ancestors-or-self; MASK_n sees n's ancestors-or-self and itself (tree-causal)
    children(path to n) = n's candidate children and the top rescore_top_k tokens of
                          log q(. | context, root, path to n) = log_softmax(LM_head(h_{MASK_n}))
The scorer then rebuilds the tree under the budget from these conditional log-probs. The causal
head is trained for this: with some probability a block reveals its first r drafted tokens.
`rescore_passes = P` repeats it: pass p + 1's candidate tree is grown from pass p's trie, so the
children a pass proposed are conditioned on in the next (P + 1 head forwards a round).

With `lookup = true`, the `ngram` drafter's continuations of earlier matches of the current suffix
join the proposal (`MergedProposal`): text that repeats its context (code, quoted passages) is
drafted by copying, the rest by the head, in one tree under one budget. The lookup's edges are
scored by the acceptance rates measured for the head's target (`lookup.json` beside the head,
`drafters/lookup_calibration.py`), so that a copied token and a drafted one compete as probabilities.

With `head_calibration = true` and a calibration beside the checkpoint (`head_rates.json`, `calibration.py`), the marginals
are scored by the acceptance rates measured for this head instead of log q: by depth, q and the
rank of the parent in its own row (`CalibratedMarginals`), which the tree's scorer then sums.

Drafted ahead (`DraftsAhead`, the pipeline's device path): the context append and the one-forward
draft of the next round are queued before the host reads this round's result, from what the
device holds (`packed`: the accepted path and the bonus token, which is the next root; the next
anchor is length + k). They read the whole context buffers with the keys from the anchor on
masked, as the CUDA graphs always do; the draft's top-k goes to a pinned host buffer behind it,
with an event (`_drafted_ready`: the round's read-back was queued before, so it does not cover the
copy), and `propose` waits for it and takes it from there when `observe` found the round's whole path
committed (else it drafts itself).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from ...core.device_proposal import DeviceProposal
from ...core.errors import CheckpointError, ConfigError
from ...core.interfaces import DecodeState, Proposal
from ...core.on_device import accepted_count
from ...core.proposal import DepthMarginals, EmptyProposal, MergedProposal, TokenTrie
from ...core.tree import DraftTree, with_prefix
from ...core.tree_search import accum_logp
from ..lookup_calibration import LookupCalibration
from ..ngram import NgramDrafter
from .calibration import FILE as HEAD_RATES, HeadCalibration, weights_digest
from .checkpoint import CALIBRATION, WEIGHTS, UntrainedHeadError, check_target, load_head, read_config
from .context import ContextDrafter
from .masks import block_mask, rescore_ancestors
from .model import DraftHead, HeadConfig
from .options import RANDOM, DFlashOptions, EagleOptions, HeadOptions
from .pool import ContextPool, PooledDrafts
from .pool_lookup import LookupHistory


# target -> {what a head is built from: its DraftHead}. A batched run makes one drafter per slot
# (`Pipeline.generate_many`); they share one copy of the frozen head's weights for their target,
# each keeping its own context cache and graphs.
_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def build_head(options: HeadOptions | EagleOptions, target: Any, kind: str) -> DraftHead:
    """A head of `kind` for `target`: loaded from `options.checkpoint`, or random (seeded) for
    checkpoint "random"; no checkpoint is a one-line `UntrainedHeadError`. An explicit `causal`
    option picks the kind ("causal" / "dflash") over the drafter's name. Built once per target
    and (kind, options that shape the head, checkpoint file state): later calls return the same
    frozen module."""
    stamp = None
    if options.checkpoint not in (None, RANDOM):
        weights = Path(options.checkpoint) / "head.safetensors"
        stamp = (weights.stat().st_mtime_ns, weights.stat().st_size) if weights.is_file() else None
    key = (kind, getattr(options, "causal", None), options.checkpoint, stamp, options.layers,
           tuple(options.target_layers or ()), getattr(options, "block_size", None), options.seed)
    try:
        built = _BUILT.setdefault(target, {})
    except TypeError:  # a target that cannot be weakly referenced: no sharing
        return _build_head(options, target, kind)
    if key not in built:
        built[key] = _build_head(options, target, kind)
    return built[key]


def _build_head(options: HeadOptions | EagleOptions, target: Any, kind: str) -> DraftHead:
    info = target.info
    causal = getattr(options, "causal", None)  # only the parallel heads have it
    if causal is not None:
        kind = "causal" if causal else "dflash"
    arch = {"layers": options.layers, "target_layers": options.target_layers, "block_size": getattr(options, "block_size", None)}
    check_fits(options, info)
    if options.checkpoint is None:
        raise UntrainedHeadError(kind, info, target)
    if options.checkpoint == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            return DraftHead(HeadConfig.for_target(
                kind, info.hidden_size, info.num_kv_heads, info.head_dim, info.num_layers,
                layers=arch["layers"] or 1, target_layers=arch["target_layers"], block_size=arch["block_size"] or 16,
                target_name=info.name, target_fingerprint=info.fingerprint, vocab_size=info.vocab_size,
            ))  # fmt: skip
    config = read_config(options.checkpoint)
    check_target(config, info, options.checkpoint)
    if config.kind != kind:
        raise CheckpointError(f"head checkpoint {options.checkpoint} is a {config.kind!r} head, this drafter needs {kind!r}")
    found = {"layers": config.num_layers, "target_layers": list(config.target_layers), "block_size": config.block_size}
    for name, value in arch.items():
        if value is not None and value != found[name]:
            raise ConfigError(f"option {name}={value} contradicts checkpoint {options.checkpoint} ({name}={found[name]})")
    return load_head(options.checkpoint)


def check_fits(options: HeadOptions | EagleOptions, info: Any) -> None:
    """Options that depend on the target, checked before anything is allocated."""
    layers = options.target_layers or ()
    bad = [t for t in layers if not 0 <= t < info.num_layers]
    if bad:
        raise ConfigError(f"target_layers: layer {bad[0]} does not exist; the target has layers 0..{info.num_layers - 1}")
    for name in ("top_k", "rescore_top_k"):
        value = getattr(options, name, 0)
        if value > info.vocab_size:
            raise ConfigError(f"{name}={value} exceeds the target's vocabulary of {info.vocab_size} tokens")
    block = getattr(options, "block_size", None) or getattr(options, "depth", 0)
    if block >= info.max_positions:
        raise ConfigError(f"block_size/depth {block} does not fit the target's {info.max_positions} positions")


class HeadDrafter(ContextDrafter):
    def __init__(self, head: DraftHead, target: Any, options: HeadOptions):
        super().__init__(head, target)
        if options.rescore and not head.config.causal:
            raise ConfigError("rescore needs a causal head; this checkpoint is bidirectional (dflash)")
        self.options = options
        self.lookup = NgramDrafter(calibration=lookup_calibration(options)) if options.lookup else None
        self.calibration = head_calibration(options, head)
        if options.compiled:  # draft, append and rescoring, their small operators fused by inductor (what it cannot trace runs eagerly)
            self.draft_many = torch.compile(self.draft_many, dynamic=True)  # type: ignore[method-assign]
            self.context_rows = torch.compile(self.context_rows, dynamic=True)  # type: ignore[method-assign]
            self.conditioned_log_probs = torch.compile(self.conditioned_log_probs, dynamic=True)  # type: ignore[method-assign]
        self.use_graphs(options.cuda_graphs)
        self._drafted: torch.Tensor | None = None  # [2, depths, k] (logp, token ids) of the draft queued ahead, on the host
        self._drafted_host: torch.Tensor | None = None  # its (pinned) buffer, reused
        self._drafted_ready: torch.cuda.Event | None = None  # recorded behind its copy (None: nothing to wait for)
        self._drafted_dev: tuple[torch.Tensor, torch.Tensor] | None = None  # the same draft on the device (`propose_on_device`): logp, ids [depths, k]
        # (ids int64 from a pooled job, float32 from this drafter's own: exact below 2^24)
        self._pooled: tuple[PooledDrafts, int] | None = None  # a pooled draft's step-wide drafts and this drafter's slot
        # token ids travel as float32 beside the log-probs: exact below 2^24, which every vocabulary we know is
        self._ahead = options.draft_ahead and target.info.vocab_size <= 1 << 24
        self.keeps_rows_ahead = self._ahead  # `KeepsRowsAhead`: draft_ahead appends the path's rows (observe then gets none)
        self.lookup_history = LookupHistory()  # `lookup_on_device`: what its pool slot's token history holds

    def reset(self, state: DecodeState) -> None:
        super().reset(state)
        self._drafted = self._pooled = self._drafted_dev = None
        self.lookup_history.reset()
        if self.lookup is not None:
            self.lookup.reset(state)

    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        super().observe(state, hidden)
        self.lookup_history.observed(len(state.tokens))

    @torch.no_grad()
    def draft_ahead(self, hidden: torch.Tensor | None, packed: torch.Tensor, budget: int) -> None:
        """`DraftsAhead`: append the round's accepted path (all D + 1 slots; `observe` keeps the
        committed ones) and draft from the bonus token at anchor length + k, all on the device."""
        self._drafted = self._pooled = self._drafted_dev = None
        if hidden is None or not self._ahead:
            return
        d1 = (packed.numel() - 1) // 2  # D + 1
        start = self.cache.length
        self.append_ahead(hidden, packed[1 : 1 + d1])
        k = accepted_count(packed[:1], d1)  # [1] the accepted path's length, root included
        root, anchor = packed.index_select(0, k + d1), k + start  # [1] the bonus token (the next root), [1] its position
        logp, tokens = self._draft(root, anchor, self._depths(budget)[1], self.cache.buffers())
        both = torch.stack([logp.float(), tokens.float()])  # [2, depths, k]
        self._drafted_dev = (both[0], both[1])  # ids as float32 here (int64 only where `propose_on_device` asks)
        if self._drafted_host is None or self._drafted_host.shape != both.shape:
            self._drafted_host = torch.empty(both.shape, dtype=torch.float32, pin_memory=both.is_cuda)
        # to the host behind the draft, which runs while the host reads the round's result; `propose` waits for the copy
        self._drafted = self._drafted_host.copy_(both, non_blocking=True)
        if both.is_cuda:
            self._drafted_ready = self._drafted_ready or torch.cuda.Event()
            self._drafted_ready.record()

    def draft_ahead_together(self, peers: list, hidden: list[torch.Tensor | None], packed: list[torch.Tensor],
                             budget: int) -> bool:
        """`DraftsAheadTogether`: peers alike (this class, this head, drafting ahead the same depths and
        top-k) share one `ContextPool`, made at their first call, and draft ahead in one job."""
        depths = self._depths(budget)[1]
        alike = all(type(p) is type(self) and p.head is self.head and p._ahead and p.options.draft_together
                    and p.options.top_k == self.options.top_k and p._depths(budget)[1] == depths
                    and p.options.lookup_on_device == self.options.lookup_on_device for p in peers)
        pool = ContextPool.of(peers) if alike and all(h is not None for h in hidden) else None
        if pool is None:
            return False
        pool.draft_ahead(peers, hidden, packed, depths, budget)
        return True

    def _draft(self, root: int | torch.Tensor, anchor: int | torch.Tensor, depths: int,
               context: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(logp, tokens) [depths, k] of the one-forward draft: replayed from a CUDA graph (over the
        whole buffers) where there is one — a pooled drafter's from its pool's one graph for every slot
        (`ContextPool.draft_one`) — else eagerly over `context`."""
        pool = self.cache.pool
        if self.graphs is not None and pool is not None:
            return pool.draft_one(self, root, anchor, depths)
        if self.graphs is not None:
            return self.graphs.draft(self.cache.version, root, anchor, depths,
                                     lambda r, an: self.draft_block(r, an, self.cache.buffers(), depths))  # run at capture only
        dev = self.cache._device
        ids = [x if isinstance(x, torch.Tensor) else torch.tensor([x], device=dev) for x in (root, anchor)]
        return self.draft_block(*ids, context, depths)

    def draft_block(self, root: torch.Tensor, anchor: torch.Tensor, context: list, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-forward draft of one sequence: `draft_many` with S = 1 -> (logp, tokens) [depths, k]."""
        logp, tokens = self.draft_many(root, anchor, context, depths)
        return logp[0], tokens[0]

    def draft_many(self, root: torch.Tensor, anchor: torch.Tensor, context: list, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-forward draft of S sequences (a batch's: `pool.py`). root, anchor [S] int64 on the
        device (anchor = a_s, the committed context length); context: per head layer (k, v)
        [S, C, Hkv, D], C >= a_s, keys t >= a_s masked -> (logp, tokens) [S, depths, k]: the top-k of
        q_d for d = 1..depths."""
        s, b = root.shape[0], self.config.block_size
        x = torch.cat([self.embed(root)[:, None], self.head.mask_embedding.expand(s, b - 1, -1)], dim=1)  # [S, B, H]
        pos = anchor[:, None] + torch.arange(b, device=anchor.device)  # [S, B]
        mask = block_mask(anchor[:, None], b, context[0][0].shape[1], self.config.causal)  # [S, B, C + B]
        h = self.head(x, pos, context, mask)[:, 1 : 1 + depths]  # [S, depths, H]
        logp, tokens = self.log_probs(h.reshape(s * depths, -1)).topk(self.options.top_k, dim=-1)  # [S * depths, k]
        return logp.view(s, depths, -1), tokens.view(s, depths, -1)

    def conditioned_log_probs(self, tokens: torch.Tensor, depths: torch.Tensor, queried: torch.Tensor, mask: torch.Tensor,
                              context: list) -> torch.Tensor:
        """Rescoring's one head forward: a candidate tree's N nodes (tokens, depths [N] int64, each node
        seeing its ancestors: `mask` [N + Q, a + N + Q], a = the context length) and one MASK query below
        each queried node ([Q] int64) -> [Q, V] float32 log q(child | the queried node's path)."""
        a = mask.shape[1] - mask.shape[0]
        x = torch.cat([self.embed(tokens), self.head.mask_embedding.expand(queried.shape[0], -1)])  # [N + Q, H]
        pos = a + torch.cat([depths, depths[queried] + 1])  # [N + Q]
        h = self.head(x[None], pos[None], context, mask[None])[0]  # [N + Q, H]
        return self.log_probs(h[tokens.shape[0] :])

    def _depths(self, budget: int) -> tuple[int, int]:
        """(candidate nodes, depth slots drafted): a tree of n nodes is at most n deep."""
        nodes = max(budget, round(self.options.rescore_factor * budget)) if self.options.rescore else budget
        return nodes, max(1, min(nodes, self.config.block_size - 1))

    def proposal_key(self, budget: int):
        """Budgets with equal keys get the same proposal from the same state (replay shares it);
        rescoring builds a budget-sized candidate tree, so it shares nothing."""
        return None if self.options.rescore else self._depths(budget)[1]

    @torch.no_grad()
    def propose(self, state: DecodeState, budget: int) -> Proposal:
        a, root = self.cache.length, state.tokens[-1]
        nodes, depths = self._depths(budget)
        (drafted, self._drafted), (pooled, self._pooled) = (self._drafted, None), (self._pooled, None)
        self._drafted_dev = None
        ahead = drafted is not None and self.kept_ahead and drafted.shape[1] == depths  # the round committed the path drafted from
        if ahead and self._drafted_ready is not None:
            self._drafted_ready.synchronize()  # the copy `draft_ahead` queued (a pooled draft's: its job's, one event for all)
        proposal: Proposal
        if ahead and pooled is not None and self.calibration:  # the step's drafts, calibrated together
            proposal = pooled[0].marginals(self.calibration, pooled[1])
        else:
            logp, tokens = (drafted[0], drafted[1].long()) if ahead else self._draft(root, a, depths, self.cache.context())
            proposal = self.calibration.marginals(tokens, logp) if self.calibration else DepthMarginals(tokens, logp)
        if self.options.rescore and budget >= 1:
            for _ in range(self.options.rescore_passes):  # pass p + 1 conditions the children that pass p proposed
                proposal = self.rescore(accum_logp(proposal, root, nodes), a)
        if self.lookup is not None:
            copied = self.lookup.propose(state, budget)
            if not isinstance(copied, EmptyProposal):
                proposal = MergedProposal(proposal, copied)
        return proposal

    @torch.no_grad()
    def propose_on_device(self, state: DecodeState, budget: int) -> DeviceProposal | None:
        """`ProposesOnDevice`: the same proposal as `propose` — the head's rows merged with the prompt
        lookup's trie — with the rows left on the device (the draft queued ahead where the round kept
        it, else drafted now). None where rows are not the whole proposal: rescoring or a calibration."""
        if self.options.rescore or self.calibration is not None:
            return None
        depths = self._depths(budget)[1]
        drafted, self._drafted, self._pooled, self._drafted_dev = self._drafted_dev, None, None, None
        if drafted is not None and self.kept_ahead and drafted[1].shape[0] == depths:
            logp, tokens = drafted[0], drafted[1].long()  # a pooled draft's ids are int64 already (no launch)
        else:
            logp, tokens = self._draft(state.tokens[-1], self.cache.length, depths, self.cache.context())
            logp, tokens = logp.float(), tokens.clone()  # a graph's outputs: the next replay rewrites them
        if self.lookup is None or not self.options.lookup_on_device:
            return DeviceProposal(tokens, logp, None if self.lookup is None else self.lookup.propose_flat(state, budget))
        pool = self.cache.pool
        trie = self.lookup_history.trie(self.lookup, pool, None if pool is None else pool.slot[id(self)], state, budget,
                                        self.cache._device)
        return DeviceProposal(tokens, logp, trie)

    @torch.no_grad()
    def rescore(self, tree: DraftTree, a: int) -> TokenTrie:
        """Conditional log-probs of every candidate node's children given its actual path."""
        dev = self.cache._device
        nodes = torch.nonzero(tree.depths < self.config.block_size - 1).flatten().tolist()  # the Q nodes whose children the head can place
        queried = torch.tensor(nodes, dtype=torch.int64, device=dev)  # [Q]
        mask = with_prefix(rescore_ancestors(tree.ancestor_mask().to(dev), queried), a)  # [N + Q, a + N + Q]
        logp = self.conditioned_log_probs(tree.tokens.to(dev), tree.depths.to(dev), queried, mask, self.cache.context())  # [Q, V]
        top = logp.topk(self.options.rescore_top_k, dim=-1).indices.tolist() if self.options.rescore_top_k else None
        tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
        paths: list[tuple[int, ...]] = [()]
        children: list[list[int]] = [[] for _ in tokens]  # candidate child tokens of each node
        for i in range(1, tree.size):
            paths.append(paths[parents[i]] + (tokens[i],))
            children[parents[i]].append(tokens[i])
        kids = [sorted(set(children[n]) | set(top[q] if top else ())) for q, n in enumerate(nodes)]
        rows = torch.tensor([q for q, ks in enumerate(kids) for _ in ks], device=dev)  # [E] one per edge
        cols = torch.tensor([t for ks in kids for t in ks], device=dev)  # [E]
        edge_logp = logp[rows, cols].tolist()  # one gather, one wait for the device (was one per node)
        trie, e = TokenTrie(), 0
        for node, ks in zip(nodes, kids):  # a node's children are distinct tokens: one row each
            trie.set_children(paths[node], dict(zip(ks, edge_logp[e : e + len(ks)])))
            e += len(ks)
        return trie


def lookup_calibration(options: HeadOptions) -> LookupCalibration | None:
    """The checkpoint's `lookup.json`, where it has one and `lookup_calibration` is on."""
    if not options.lookup_calibration or options.checkpoint in (None, RANDOM):
        return None
    path = Path(options.checkpoint) / CALIBRATION
    return LookupCalibration.load(path) if path.is_file() else None


_CALIBRATIONS: dict[tuple[str, int, int], HeadCalibration] = {}  # (path, mtime, size) -> the file's calibration


def head_calibration(options: HeadOptions, head: DraftHead) -> HeadCalibration | None:
    """The checkpoint's `head_rates.json`, where it has one and `head_calibration` is on; one that
    was measured for a head of another depth is a one-line CheckpointError."""
    if not options.head_calibration or options.checkpoint in (None, RANDOM):
        return None
    path = Path(options.checkpoint) / HEAD_RATES
    if not path.is_file():
        return None
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    calibration = _CALIBRATIONS.get(key)
    if calibration is None:  # one object per file: a batch's drafters share it (`pool.PooledDrafts` calibrates once a step)
        calibration = _CALIBRATIONS[key] = HeadCalibration.load(path)
    measured = calibration.source.get("head_sha256")
    if measured is not None and measured != weights_digest(Path(options.checkpoint) / WEIGHTS):
        raise CheckpointError(f"head calibration {path} was measured for other weights than {Path(options.checkpoint) / WEIGHTS}; "
                              f"re-measure it with `jetspec calibrate-head --head {options.checkpoint}`")
    if calibration.depths != head.config.block_size - 1:
        raise CheckpointError(f"head calibration {path} has {calibration.depths} depths, the head drafts "
                              f"{head.config.block_size - 1}; re-measure it with `jetspec calibrate-head --head {options.checkpoint}`")
    return calibration


SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "heads"  # <target name>/causal/head.json


def shipped_checkpoint(info: Any) -> Path | None:
    """The causal head shipped with jetspec for this exact target (same name and fingerprint)."""
    folder = SHIPPED / info.name / "causal"
    if not (folder / "head.json").is_file():
        return None
    return folder if read_config(str(folder)).target_fingerprint == info.fingerprint else None


def jetspec_drafter(options: HeadOptions, target: Any) -> HeadDrafter:
    """Factory of the `jetspec` drafter (causal parallel head). Without a `checkpoint`, the head
    shipped for this target is used where one exists (else a one-line UntrainedHeadError)."""
    if options.checkpoint is None and (shipped := shipped_checkpoint(target.info)) is not None:
        options = options.model_copy(update={"checkpoint": str(shipped)})
    return HeadDrafter(build_head(options, target, "causal"), target, options)


def dflash_drafter(options: DFlashOptions, target: Any) -> HeadDrafter:
    """Factory of the `dflash` drafter (bidirectional parallel head)."""
    if options.causal:
        raise ConfigError("the dflash drafter is the bidirectional head; use `jetspec` for causal=true")
    return HeadDrafter(build_head(options, target, "dflash"), target, options)
