"""Where a batched step's trees come from (`BatchEngine`'s part that makes them):

    built   per sequence on the host: drafter.propose -> scorer.build (checked as `Pipeline` checks
            it), rows reserved for its size, then the step's trees uploaded in one copy
            (`TreeUpload.many`) or, on the host path, packed as they are
    grown   on the device (`batch_grow.py`), where every drafter `ProposesOnDevice` and the scorer
            `BuildsOnDevice` (`generation.build_on_device`): rows reserved for budget + 1 nodes
            each, one build for the step; the host reads the trees back when the step lands
            (`_read_trees`) and checks them before anything is committed

Both give the step's trees, its packed tokens [R] and `BatchMeta`, and its `DeviceTree`s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from .batch import BatchMeta, SequenceParts
from .batch_grow import Grower, host_trees
from .batch_records import Finished, LaunchedStep, SequenceInFlight
from .checks import Blame, reading
from .errors import JetSpecError
from .interfaces import AttentionMeta, KVCache
from .on_device import DeviceTree, TreeUpload
from .tree import DraftTree

if TYPE_CHECKING:
    from .pipeline import Pipeline


class StepTrees:
    """The engine's tree-making methods (a mixin of `BatchEngine`, whose state they read)."""

    pipe: Pipeline
    parts: list[SequenceParts]
    _uploads: tuple[TreeUpload, TreeUpload]
    _growers: tuple[Grower, Grower]
    _on_device: bool
    _speculative: bool
    _finish: Callable[[SequenceInFlight, list[KVCache], list[SequenceInFlight | None], str, Exception | None], Finished]

    def _built(self, active: list[SequenceInFlight], caches: list[KVCache], slots: list[SequenceInFlight | None], budget: int,
               half: int) -> Iterator[Finished]:
        """Draft and build each tree on the host, reserve its rows, and upload the step's trees in one
        copy -> (generator return) (trees, tokens [R], meta, device trees, t0), or None: no sequence left."""
        trees: list[tuple[SequenceInFlight, DraftTree | None]] = []
        for seq in active:
            try:
                trees.append((seq, self._tree(seq, budget)))
            except JetSpecError as e:
                yield self._finish(seq, caches, slots, "error", e)
        t0 = time.perf_counter()
        reserved = []
        for seq, tree in trees:
            try:
                caches[seq.slot].begin(tree.size)  # a shared page pool may be full: this sequence ends, the others go on
            except JetSpecError as e:
                yield self._finish(seq, caches, slots, "error", e)
                continue
            reserved.append((seq, tree))
        if not reserved:
            return None
        prefixes, device = [caches[seq.slot].committed for seq, _ in reserved], self.pipe.target.info.device
        dtrees: list[DeviceTree] = []
        if self._on_device:  # the step's one copy to the device: every tree, end to end; the metadata is read from there
            dtrees, block = self._uploads[half].many([t for _, t in reserved], prefixes)  # block [7, R]
            metas = [AttentionMeta(p, positions=d.positions, subtree_sizes=d.subtree_sizes) for p, d in zip(prefixes, dtrees)]
            return reserved, block[0], BatchMeta.pack(metas, packed=(block[4], block[3])), dtrees, t0
        meta = BatchMeta.pack([AttentionMeta.for_tree(t, p, device) for (_, t), p in zip(reserved, prefixes)])
        return reserved, torch.cat([t.tokens for _, t in reserved]).to(device), meta, dtrees, t0

    def _grown(self, active: list[SequenceInFlight], caches: list[KVCache], slots: list[SequenceInFlight | None], budget: int,
               half: int) -> Iterator[Finished]:
        """The step's trees grown on the device (`batch_grow.py`): rows reserved for budget + 1 nodes
        each, then the drafters' device proposals and the scorer's one build -> (generator return) as
        `_built`, with no host trees yet (`_land` reads them back); built on the host where a drafter or
        the scorer declines; None: no sequence left."""
        t0, n = time.perf_counter(), budget + 1
        reserved = []
        for seq in active:
            try:
                caches[seq.slot].begin(n)
                reserved.append(seq)
            except JetSpecError as e:
                yield self._finish(seq, caches, slots, "error", e)
        if not reserved:
            return None
        prefixes = [caches[seq.slot].committed for seq in reserved]
        try:
            grown, failed = self._growers[half].grow([self.parts[seq.slot].drafter for seq in reserved], self.pipe.scorer,
                                                     [seq.state for seq in reserved], prefixes, budget, self.pipe.labels,
                                                     self.pipe.target.info.vocab_size)
        except JetSpecError as e:  # the scorer failed: every sequence of the step fails with it
            for seq in reserved:
                yield self._finish(seq, caches, slots, "error", e)
            return None
        for s, e in failed.items():
            yield self._finish(reserved[s], caches, slots, "error", e)
        kept = [(seq, None) for s, seq in enumerate(reserved) if s not in failed]
        if grown is None:
            return None if not kept else (yield from self._built([seq for seq, _ in kept], caches, slots, budget, half))
        rows = grown.block.unbind(0)  # 7 x [R]
        dtrees = [DeviceTree(grown.block, s * n, n, grown.max_depth, rows) for s in range(len(kept))]
        metas = [AttentionMeta(p, positions=d.positions, subtree_sizes=d.subtree_sizes)
                 for p, d in zip([caches[seq.slot].committed for seq, _ in kept], dtrees)]
        spent = (time.perf_counter() - t0) / len(kept)
        for seq, _ in kept:
            seq.stats.seconds["draft"] += spent  # proposals and the build, on the host: the launch of the device's work
        return kept, rows[0], BatchMeta.pack(metas, packed=(rows[4], rows[3])), dtrees, time.perf_counter()

    def _read_trees(self, step: LaunchedStep, caches: list[KVCache]) -> list[tuple[SequenceInFlight, DraftTree]]:
        """A grown step's trees, read back and checked (`host_trees`); a sequence whose tree is broken
        gets the scorer's error in place of its acceptance (`step.failed`) and a root-only stand-in."""
        seqs = [seq for seq, _ in step.trees]
        made = host_trees(step.grower.readback.wait_array(), step.dtrees[0].size, [seq.state.tokens[-1] for seq in seqs],
                          [caches[seq.slot].committed for seq in seqs], self.pipe.target.info.vocab_size, self.pipe.labels["scorer"])
        for s, tree in enumerate(made):
            if isinstance(tree, JetSpecError):
                step.failed[s] = tree
        return [(seq, DraftTree.root_only(seq.state.tokens[-1]) if isinstance(t, JetSpecError) else t) for seq, t in zip(seqs, made)]

    def _tree(self, seq: SequenceInFlight, budget: int) -> DraftTree:
        """Sequence `seq`'s tree for this step, checked as `Pipeline` checks it."""
        pipe, clock = self.pipe, time.perf_counter
        root = seq.state.tokens[-1]
        drafter = self.parts[seq.slot].drafter
        if not self._speculative or budget < 1:
            return DraftTree.root_only(root)
        t0 = clock()
        with Blame(pipe.labels["drafter"], "in propose"):
            proposal = reading(drafter.propose(seq.state, budget), pipe.labels["drafter"], pipe.target.info.vocab_size)
        t1 = clock()
        tree = pipe.build_tree(proposal, root, budget)
        seq.stats.seconds["draft"] += t1 - t0
        seq.stats.seconds["build"] += clock() - t1
        return tree

