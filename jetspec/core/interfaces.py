"""The component kinds of a decode pipeline, as `typing.Protocol`s.

One round, as data flows through it:

    state -> Drafter.propose -> TreeScorer.build(budget) -> DraftTree -> Target.forward(tree, KV)
          -> Verifier.accept -> KVCache.commit(path) -> Drafter.observe(hidden of committed) -> state

Plain greedy decoding is the same loop with a root-only tree (budget 0, no drafter). The data
that flows (DecodeState, Acceptance, AttentionMeta, TargetInfo, TargetOutput) is in `records.py`,
re-exported here.

Shapes use: N tree/query tokens, T committed tokens, V vocab, H hidden size, Hq query heads,
Hkv key/value heads, D head dim, L layers, k fused hidden layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Protocol, Sequence, runtime_checkable

import torch

from .device_proposal import (BuildsOnDevice, DeviceProposal, DeviceProposals, DeviceTrees, ProposesOnDevice, builds_on_device,
                              proposes_on_device)
from .distributed import Ranks
from .on_device import (AcceptsBatchOnDevice, AcceptsOnDevice, CommitsBatchOnDevice, CommitsOnDevice, DeviceTree, DraftsAhead, DraftsAheadTogether,
                        KeepsRowsAhead, accepts_batch_on_device, rows_kept_ahead,
                        accepts_on_device)
from .records import Acceptance, AttentionMeta, DecodeState, TargetInfo, TargetOutput
from .tree import DraftTree

if TYPE_CHECKING:
    from .batch import BatchMeta, PackedTables


# ---------------------------------------------------------------------------- protocols
@runtime_checkable
class Proposal(Protocol):
    """A drafter's candidates, as a lazy trie: the scorer asks for the children of a path."""

    def children(self, path: tuple[int, ...]) -> Sequence[tuple[int, float]]:
        """Candidate next tokens after `path` (draft tokens below the root) with their
        conditional log-probs, sorted by log-prob descending, tokens distinct."""
        ...


@runtime_checkable
class Drafter(Protocol):
    """Proposes candidate continuations of the committed tokens.
    Optional: `ReadsHiddenStates`, `KeyedProposals`, `DraftsAhead` (and `KeepsRowsAhead`), `ProposesOnDevice`."""

    def reset(self, state: DecodeState) -> None:
        """Start a new sequence (after prefill; `state.tokens` is the prompt)."""
        ...

    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        """Tokens were committed. `hidden` [n, k, H] are the target hidden states of the tokens
        whose K/V was just committed (prefill: prompt[:-1]; a round: root + accepted drafts),
        or None when the drafter does not need them."""
        ...

    def propose(self, state: DecodeState, budget: int) -> Proposal:
        """Candidates for the tokens after `state.tokens` (whose last token is the root)."""
        ...


@runtime_checkable
class TreeScorer(Protocol):
    """Chooses at most `budget` draft nodes out of a proposal.
    Optional: `BuildsOnDevice`."""

    def build(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        """A tree of the root and at most `budget` draft nodes, chosen from `proposal`.

        `root` is a token id: the last committed token (`state.tokens[-1]`), whose K/V the
        round's forward writes; it becomes node 0, so `tokens[0] == root`. Every other node is a
        candidate the proposal offered under its parent's path (`proposal.children(path)`, the
        path being the draft tokens from below the root down to the parent), siblings carry
        distinct tokens, and the tree is in DFS pre-order (`DraftTree.from_parents` lays it out).
        `scores[i]` is node i's cumulative drafter log-prob, the sum of the `logp`s on the path
        from the root (`scores[0] == 0`): what the scorer ranked by, never read by the greedy
        verifier (losslessness does not depend on it). Budget 0 or an empty proposal: the root
        alone, which is a plain decoding step; otherwise at least one draft node (a scorer that
        always returns the root alone is lossless but never faster than plain decoding, and the
        conformance kit fails it)."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Decides which drafts to keep, given the target's logits at every tree node.
    Optional: `ResettableVerifier`, `AcceptsOnDevice`."""

    def accept(self, tree: DraftTree, logits: torch.Tensor, state: DecodeState) -> Acceptance:
        """`logits` [N, V] are the target's next-token logits at each node of `tree`."""
        ...


@runtime_checkable
class KVCache(Protocol):
    """Key/value storage of one sequence: `committed` tokens, then `pending` ones written by the
    forward in flight. Keys are stored after RoPE. Logical token order is the order of `read`.
    Optional: `RowKVCache` (capability 'kv_rows'), `GraphSafe`, `CommitsOnDevice`."""

    capacity: int

    @property
    def committed(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def reset(self) -> None:
        """Drop everything (a new sequence)."""
        ...

    def begin(self, n: int) -> None:
        """Reserve `n` pending slots after the committed tokens; `CapacityError` if they do not fit."""
        ...

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the pending tokens' keys/values of one layer: k, v [n, Hkv, D]."""
        ...

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of committed + pending tokens, logical order: 2 x [T + n, Hkv, D]."""
        ...

    def commit(self, keep: Sequence[int]) -> None:
        """Keep pending tokens `keep` (ascending, pending-relative indices) right after the
        committed ones, in that order; discard the other pending tokens."""
        ...


@runtime_checkable
class AttentionBackend(Protocol):
    """Computes attention of N queries over the cache with the tree mask of `meta`.
    Optional: `PositionInvariantAttention`, `GraphSafe`, `LaunchForms`."""

    def attend(self, q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        """q [N, Hq, D] (after RoPE) -> out [N, Hq, D]. The layer's pending K/V are already written."""
        ...


@runtime_checkable
class PositionInvariantAttention(Protocol):
    """Capability of an attention backend: a mode in which a query at absolute position p reduces
    over its keys — the committed prefix, then its ancestors at p - depth .. p — in an order fixed
    by p alone (blocks and splits at fixed absolute key positions), whatever the rest of the
    forward is: a one-token step, any tree, a prefill chunk, CUDA-graph padding. A target with
    `exact = true` runs attention in this mode (`jetspec.core.invariant` states the whole rule)."""

    def position_invariant(self) -> AttentionBackend:
        """This backend's position-invariant mode, as a new backend object."""
        ...


@runtime_checkable
class Target(Protocol):
    """The frozen model being decoded. `forward` writes the K/V of its N input tokens as pending
    entries of `cache` and returns next-token logits for each of them.
    Optional: `LendsEmbeddings`, `PadsForward`, `SpansRanks`."""

    info: TargetInfo
    tokenizer: Any | None

    def forward(
        self,
        tokens: torch.Tensor,
        meta: AttentionMeta,
        cache: KVCache,
        hidden_layers: Sequence[int] = (),
    ) -> TargetOutput:
        """tokens [N] int64 on the target's device; `hidden_layers` selects hidden states to return
        (layer l = output of decoder layer l; empty = none)."""
        ...


# ---------------------------------------------------------------------------- optional members
# What a component may offer beyond its kind's Protocol. Each is a Protocol of its own: the code
# that uses one asks `isinstance(x, ThatProtocol)` (or the function beside it), never
# `getattr(x, "name", default)`, and the conformance kit checks every one a component has.
# `AcceptsOnDevice` and `CommitsOnDevice` live beside the packed layout they share
# (`on_device.py`) and are exported from here like the rest.


@runtime_checkable
class ReadsHiddenStates(Protocol):
    """A drafter that reads the target's hidden states (register it with
    `requires={"target:hidden_states"}`). A drafter without this member gets `hidden = None`."""

    # target layers (0-based; layer l = output of decoder layer l) whose states `observe`
    # receives as `hidden` [n, k, H], k = len(hidden_layers), in this order; each < num_layers
    hidden_layers: Sequence[int]


def observed_layers(drafter: Drafter | None) -> tuple[int, ...]:
    """The target layers `drafter` observes: its `hidden_layers`, or none."""
    return tuple(drafter.hidden_layers) if isinstance(drafter, ReadsHiddenStates) else ()


@runtime_checkable
class KeyedProposals(Protocol):
    """A drafter whose proposal depends on the budget only through a key (a replayed budget
    sweep proposes once per key and committed length, `bench/replay.py`)."""

    def proposal_key(self, budget: int) -> Hashable | None:
        """Equal keys for two budgets promise equal proposals from the same state; None: this
        budget's proposal is shared with no other."""
        ...


@runtime_checkable
class ResettableVerifier(Protocol):
    """A verifier with per-sequence state (a sampling verifier's random stream)."""

    def reset(self, state: DecodeState) -> None:
        """A new sequence starts: called once at the start of every `generate` (and of every
        sequence of `generate_many`, on that slot's own verifier), before its first `accept` (a sampling verifier re-seeds there, so the same seed gives the same output)."""
        ...


@runtime_checkable
class GraphSafe(Protocol):
    """A KV cache or attention backend that declares whether it may run inside a captured CUDA
    graph: no host synchronisation and no new allocations in `write`/`attend`, device tensors at
    fixed addresses, T read from `AttentionMeta.prefix_len_t` when it is set. A target captures
    graphs only when its cache and backend both say True."""

    graph_safe: bool  # a class attribute, True or False


def is_graph_safe(component: Any) -> bool:
    return isinstance(component, GraphSafe) and component.graph_safe is True


@runtime_checkable
class RowKVCache(Protocol):
    """A KV cache whose storage the row-gathering attention kernels (`triton`, `cute`) read in
    place (register it with `provides={"kv_rows"}`; `kernels/row_inputs.py` is the reader)."""

    k: torch.Tensor  # [L, ..., Hkv, D] contiguous, token rows in between (dense [L, C, Hkv, D])
    v: torch.Tensor  # same shape as k
    # [>= T + n] int32 on the cache's device: logical token t lives in row slot_table[t] of
    # k[layer].view(-1, Hkv, D); None: row t (physical order is logical order)
    slot_table: torch.Tensor | None


@runtime_checkable
class PooledSlotTables(Protocol):
    """A `RowKVCache` among several over one pool whose slot maps are the rows of ONE table (the
    paged cache's `sequences`): a CUDA graph of a packed forward reads any sequence's slot map from
    that table, at its row, with nothing copied per step."""

    slot_tables: torch.Tensor  # [S, C] int32, shared by the pool's sequences; slot_table is slot_tables[slot_row]
    slot_row: int


@runtime_checkable
class AttendsPackedTables(Protocol):
    """A `BatchedAttention` whose packed launch reads all its metadata from device tensors
    (`PackedTables`): a target can keep them in static buffers and capture the launch in a CUDA graph."""

    def attend_tables(self, q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, tables: "PackedTables",
                      scale: float) -> torch.Tensor:
        """q [R, Hq, D]; k_rows, v_rows [rows, Hkv, D] (one layer's pool) -> out [R, Hq, D], row r
        attending as `attend_batch` would for the batch the tables describe."""
        ...


@runtime_checkable
class LaunchForms(Protocol):
    """An attention backend whose launches for one sequence's forward take one of several forms,
    chosen on the host from the tree's size and T (the `triton` exact kernel: one launch or two).
    A CUDA graph records the form of its capture, so the target keys its graphs on it as well."""

    def launch_form(self, rows: int, prefix_len: int, chain: bool, key_bytes: int) -> int:
        """The form `attend` takes for `rows` packed (token, head) rows (N * the GQA group) over
        `prefix_len` committed keys of `key_bytes` each in one layer's cache (K and V of every KV
        head); no output bit may depend on it."""
        ...


@runtime_checkable
class LendsEmbeddings(Protocol):
    """A target that lends its input embedding and LM head to draft heads (the head drafters
    need it; both built-in targets and the kit's tiny targets have it)."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] int64 -> [..., H]: the target's input embedding."""
        ...

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., V]: the output projection alone, no final norm."""
        ...


@runtime_checkable
class PadsForward(Protocol):
    """A target whose forward may write more pending K/V entries than it has tokens (a CUDA
    graph replayed at a padded size): the pipeline sizes its cache that much larger, and its
    round reserves `pending_for(n, cache)` slots, so that the forward need not reserve again."""

    extra_pending: int  # pending entries a forward may write beyond its N tokens

    def pending_for(self, n: int, cache: KVCache) -> int:
        """The pending entries a forward of n tokens on `cache` writes: n, or n <= m <= n + extra_pending."""
        ...


def extra_pending(target: Target) -> int:
    return int(target.extra_pending) if isinstance(target, PadsForward) else 0


@runtime_checkable
class SpansRanks(Protocol):
    """A target split over the processes of a torch.distributed group (tensor parallelism): its
    forward makes collectives, so every rank must call it with the same tokens, tree and cache
    operations in the same order. The pipeline keeps them in lockstep: rank 0 drafts, and shares
    each round's tree and accepted path (`core/distributed.py`). Its logits and hidden states are
    whole (not sharded) on every rank; its cache holds `info.kv_heads_here` heads."""

    ranks: Ranks | None  # None: this instance runs in one process


def ranks_of(target: Target) -> Ranks | None:
    """The group `target` spans, or None for a one-process target."""
    return target.ranks if isinstance(target, SpansRanks) else None


# ---------------------------------------------------------------------------- batched forms
# Several sequences decode at once (`core/batch_engine.py`). Drafters, scorers and verifiers keep
# their one-sequence contract: the engine calls each sequence's own drafter and verifier (an
# adapter, `batch.SequenceParts`). The target and the KV cache get a batched form.


@runtime_checkable
class BatchedTarget(Protocol):
    """A target that verifies the trees of several sequences in ONE forward: R packed rows, each
    attending to its own sequence's cache (`BatchMeta` says which, where, and its ancestors)."""

    def batch_problem(self) -> str | None:
        """None when `forward_batch` can run as this target is set up; else one line saying why
        not and what is supported (e.g. an attention backend without `BatchedAttention`)."""
        ...

    def forward_batch(
        self,
        tokens: torch.Tensor,
        meta: "BatchMeta",
        caches: Sequence[KVCache],
        hidden_layers: Sequence[int] = (),
    ) -> TargetOutput:
        """tokens [R] int64, the trees of sequences 0..S-1 end to end (rows `meta.rows(s)` are
        sequence s's, written as pending entries of `caches[s]`, which has `begin`-reserved them)
        -> logits [R, V], hidden [R, k, H] or None. Row r's outputs equal those of
        `forward(tokens[meta.rows(s)], meta.seqs[s], caches[s])` for its sequence s."""
        ...


@runtime_checkable
class BatchedAttention(Protocol):
    """An attention backend that takes the packed rows of several sequences at once."""

    def attend_batch(self, q: torch.Tensor, caches: Sequence[KVCache], layer: int, meta: "BatchMeta",
                     scale: float) -> torch.Tensor:
        """q [R, Hq, D] (after RoPE) -> out [R, Hq, D]: row r of sequence s = meta.seq_ids[r]
        attends to `caches[s]` under the tree mask of `meta.seqs[s]` (its prefix and ancestors)."""
        ...


@runtime_checkable
class BatchedKVCache(Protocol):
    """A KV cache whose storage several sequences can share (the `paged` cache: one page pool,
    a slot map and page table per sequence). Other caches batch as one cache per sequence."""

    def sequences(self, n: int) -> list[KVCache]:
        """`n` new caches of this one's capacity over one shared storage sized for all of them
        (this object is only the template; it is not one of them)."""
        ...


__all__ = [
    "Acceptance", "AcceptsBatchOnDevice", "AcceptsOnDevice", "AttendsPackedTables", "AttentionBackend",
    "AttentionMeta", "BatchedAttention", "BatchedKVCache", "BatchedTarget", "BuildsOnDevice", "CommitsOnDevice", "DecodeState",
    "DeviceProposal", "DeviceProposals", "DeviceTree", "DeviceTrees", "Drafter", "DraftsAhead", "GraphSafe", "KVCache", "KeepsRowsAhead", "KeyedProposals", "LaunchForms", "LendsEmbeddings",
    "PadsForward", "PooledSlotTables", "PositionInvariantAttention", "Proposal", "ProposesOnDevice", "ReadsHiddenStates", "Ranks",
    "ResettableVerifier", "RowKVCache", "SpansRanks", "Target", "TargetInfo", "TargetOutput", "TreeScorer",
    "Verifier", "accepts_batch_on_device", "accepts_on_device", "builds_on_device", "extra_pending", "is_graph_safe",
    "observed_layers", "proposes_on_device", "ranks_of", "rows_kept_ahead",
]
