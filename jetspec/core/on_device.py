"""What a round keeps on the target's device, and the one copy that brings its result back.

A round whose verifier has `accept_on_device` (`AcceptsOnDevice`) and whose KV cache has
`stage_commit` (`CommitsOnDevice`):

    host    DraftTree  --one host-to-device copy (`TreeUpload`)-->  DeviceTree
    device  forward -> logits [N, V] -> accept_on_device -> packed [2D + 3] int64
            stage_commit(path)               the KV gather, queued before the host waits
    host    one device-to-host copy of `packed` (`Readback`) -> Acceptance -> commit's bookkeeping

so the host waits for the device once per round and reads 2D + 3 integers (D = the tree's depth),
whatever N and V are. The packed layout, [2D + 3] int64 (`unpack`):

    packed[0]              k, the accepted path's length (root included, 1 <= k <= D + 1)
    packed[1 + d]          path: the accepted node at depth d, for d < k; after the path, node
                           indices in [0, N) that mean nothing (a fixed-size gather may read
                           them, never keeps them)
    packed[D + 2 + d]      the target's token at path[d]: for d < k - 1 the accepted draft at
                           depth d + 1, for d = k - 1 the bonus; so packed[D + 2 : D + 2 + k] are
                           exactly the tokens the round commits

Buffers are persistent and grow only when a larger tree comes: a round allocates nothing on the
host, and on the device only what the verifier's few array ops make.

On CUDA the built-in steps between the forward and the read-back are one Triton launch each (`fused`):
the greedy walk (`verifiers/triton_walk.py`) and the staged K/V move (`caches/triton_rows.py`);
elsewhere their torch ops run, the reference the kernels are tested against.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from .tree import DraftTree

if TYPE_CHECKING:
    from .interfaces import DecodeState, Verifier

_TRITON = find_spec("triton") is not None


def fused(x: torch.Tensor) -> bool:
    """Whether the round's small device steps on x run as one Triton launch each: on CUDA, with
    triton installed. (bench/host_round.py --kernels replaces this rule to count that path on a CPU.)"""
    return x.is_cuda and _TRITON


def pinned(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x (host memory) as the source of a non-blocking copy to `device`: in pinned memory when the
    device is a GPU. From pageable memory the driver may first wait for the stream's queued work
    (it stages the copy), which would serialize a step behind the one still running (`overlap`)."""
    return x.pin_memory() if device.type == "cuda" else x


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x (host memory) on `device`, by a non-blocking copy from pinned memory (`pinned`): queued
    behind the stream's work, the host does not wait for it."""
    return pinned(x, device).to(device, non_blocking=True)


ROWS = 7  # tokens, parents (root: 0), depths, subtree sizes, positions, subtree ends, node index


@dataclass(frozen=True)
class DeviceTree:
    """A round's tree on the target's device: columns start .. start + N - 1 of `TreeUpload`'s
    [7, R] block (valid for one round), its rows read as views when asked for (a batched step
    makes one DeviceTree per sequence; seven views each cost more than the rest of its upload).
    The root's parent is stored as 0, not -1, so that `x[parents]` gathers need no clamp. `ends`
    and `index` are derived on the host, where they ride along in the same copy."""

    block: torch.Tensor  # [7, R] int64 on the device: the rows below, of every tree of the upload
    start: int  # this tree's first column
    size: int  # N
    max_depth: int  # D, on the host
    rows: tuple[torch.Tensor, ...]  # block's 7 rows [R] each, viewed once per upload: a slice of one costs
    # less than indexing the block again for every tree (a batched step reads ~5 rows of each sequence's tree)

    def _row(self, k: int) -> torch.Tensor:
        return self.rows[k][self.start : self.start + self.size]

    @property
    def tokens(self) -> torch.Tensor:  # [N] int64
        return self._row(0)

    @property
    def parents(self) -> torch.Tensor:  # [N] int64, parents[0] = 0 (the root)
        return self._row(1)

    @property
    def depths(self) -> torch.Tensor:  # [N] int64
        return self._row(2)

    @property
    def subtree_sizes(self) -> torch.Tensor:  # [N] int64
        return self._row(3)

    @property
    def positions(self) -> torch.Tensor:  # [N] int64, prefix_len + depth (RoPE positions)
        return self._row(4)

    @property
    def ends(self) -> torch.Tensor:
        """[N] int64, i + subtree_sizes[i]: node i's subtree is [i, ends[i]); the root's is stored
        as 0 (the root is no draft and rejects nothing: `greedy.walk_ops`)."""
        return self._row(5)

    @property
    def index(self) -> torch.Tensor:  # [N] int64, 0 .. N - 1
        return self._row(6)


class TreeUpload:
    """Copies a `DraftTree`'s int vectors to `device` in one copy per round (`many`: a batched
    step's trees, one per sequence, in one copy too): the host stacks them into a [7, N] block of
    a (pinned, on CUDA) staging buffer, one non-blocking copy moves the block into a persistent
    device buffer. Before the staging buffer is refilled, the previous round's copy is waited for
    (an event; it finished long ago: the round read its result)."""

    def __init__(self, device: torch.device | str, capacity: int = 64):
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._done = torch.cuda.Event() if self._cuda else None
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.capacity = capacity
        self._host = torch.empty(ROWS * capacity, dtype=torch.int64, pin_memory=self._cuda)  # [7 * cap]
        self._host_np = self._host.numpy()  # the same memory: the host side is filled with numpy
        self._dev = self._host if self.device.type == "cpu" else torch.empty_like(self._host, device=self.device)
        self._arange = np.arange(capacity, dtype=np.int64)  # [cap]

    def __call__(self, tree: DraftTree, prefix_len: int) -> DeviceTree:
        return self.many([tree], [prefix_len])[0][0]

    def many(self, trees: list[DraftTree], prefix_lens: list[int]) -> tuple[list[DeviceTree], torch.Tensor]:
        """Several trees (a batched step's, one per sequence) end to end in ONE [7, R] block and
        one copy, R = their total size -> (a DeviceTree per tree, a view of its own columns with
        its own tree's indices (parents, ends, index); the block [7, R] on the device: rows 0, 4
        and 3 are the step's packed tokens, positions and subtree sizes)."""
        r = sum(t.size for t in trees)
        if r > self.capacity:
            self._alloc(max(r, 2 * self.capacity))
        elif self._cuda:
            self._done.synchronize()
        host = self._host_np[: ROWS * r].reshape(ROWS, r)  # [7, R]
        depths, start = [], 0
        for tree, prefix_len in zip(trees, prefix_lens):
            depths.append(self._fill(host[:, start : start + tree.size], tree, prefix_len))
            start += tree.size
        if self._dev is not self._host:
            self._dev[: ROWS * r].copy_(self._host[: ROWS * r], non_blocking=True)
            if self._cuda:
                self._done.record()
        block = self._dev[: ROWS * r].view(ROWS, r)  # [7, R] on the device
        rows = block.unbind(0)  # 7 x [R]
        out, start = [], 0
        for tree, d in zip(trees, depths):
            out.append(DeviceTree(block, start, tree.size, d, rows))
            start += tree.size
        return out, block

    def _fill(self, host: np.ndarray, tree: DraftTree, prefix_len: int) -> int:
        """host [7, N] <- the tree's rows -> its depth D. numpy over the tree's host memory: numpy
        calls cost less than torch's per-op dispatch."""
        n = tree.size
        tokens = tree.tokens.numpy()
        if n == 1:  # plain decoding: the root alone
            host[:, 0] = (tokens[0], 0, 0, 1, prefix_len, 0, 0)
            return 0
        parents, depths, sizes = (x.numpy() for x in (tree.parents, tree.depths, tree.subtree_sizes))
        host[0], host[1], host[2], host[3], host[6] = tokens, parents, depths, sizes, self._arange[:n]
        host[1, 0] = 0  # root's parent -> 0 (see DeviceTree)
        np.add(depths, prefix_len, out=host[4])  # positions
        np.add(sizes, self._arange[:n], out=host[5])  # ends
        host[5, 0] = 0  # the root's (see DeviceTree)
        return int(depths.max())


class Readback:
    """The round's one device-to-host copy: a small int64 tensor into a (pinned) host buffer,
    then a wait for that copy alone. `copies` counts them (tests and the bench read it); `waited`
    sums the seconds the host spent blocked in those waits (the engines' `wait` phase)."""

    def __init__(self, device: torch.device | str, capacity: int = 64):
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._done = torch.cuda.Event() if self._cuda else None
        self._host = torch.empty(capacity, dtype=torch.int64, pin_memory=self._cuda)  # [cap]
        self._pending = self._host[:0]  # the view `start` copied into
        self.copies = 0
        self.waited = 0.0

    def __call__(self, x: torch.Tensor) -> list[int]:
        """x [M] int64 on the device -> its values on the host."""
        self.start(x)
        return self.wait()

    def start(self, x: torch.Tensor) -> None:
        """Queue the copy of x [M] int64 (one at a time: `wait` for it before the next `start`)."""
        m = x.numel()
        if m > self._host.numel():
            self._host = torch.empty(max(m, 2 * self._host.numel()), dtype=torch.int64, pin_memory=self._cuda)
        self._pending = self._host[:m]
        self._pending.copy_(x, non_blocking=True)
        if self._cuda:
            self._done.record()

    def wait(self) -> list[int]:
        """The values of the copy `start` queued, once it (and only what was queued before it) is done."""
        return self._landed().tolist()

    def wait_array(self) -> np.ndarray:
        """As `wait`, the values as a numpy array (a copy: the next `start` reuses the buffer)."""
        return self._landed().numpy().copy()

    def _landed(self) -> torch.Tensor:
        if self._cuda:
            t0 = time.perf_counter()
            self._done.synchronize()
            self.waited += time.perf_counter() - t0
        self.copies += 1
        return self._pending


def accepted_count(k: torch.Tensor, d1: torch.Tensor | int) -> torch.Tensor:
    """A packed result's k (packed[0], [P] or [1]) as device work reads it before the host has checked
    it: min(max(k, 1), D + 1) (d1 = D + 1, per result or one int), so that a verifier's bad count can
    only make a wrong gather the check then rejects, never an index outside its result. (Triton
    kernels that read k write the same rule: `drafters/head/pool_fill.py`.)"""
    return k.clamp(1, d1) if isinstance(d1, int) else torch.minimum(k.clamp(min=1), d1)


def unpack(values: list[int]) -> tuple[list[int], list[int]]:
    """Read-back `packed` values [2D + 3] -> (path, committed tokens), k of each; a k outside
    [1, D + 1] gives empty lists (the pipeline's acceptance check names it)."""
    k, d1 = values[0], (len(values) - 1) // 2  # d1 = D + 1
    if not 1 <= k <= d1:
        return [], []
    return values[1 : 1 + k], values[1 + d1 : 1 + d1 + k]


# ---------------------------------------------------------------------------- the capabilities
# Optional members (`interfaces.py` exports them): a verifier or cache that has one takes the
# device path above; one that has not keeps working on the host path.


@runtime_checkable
class AcceptsOnDevice(Protocol):
    """A verifier that decides on the logits' device, so that a round reads back one small tensor
    (`core/on_device.py`). `accept` stays the reference: both keep the same path and tokens."""

    def accept_on_device(self, tree: DeviceTree, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """logits [N, V] -> packed [2D + 3] int64 on their device (layout: `on_device.py`), no sync."""
        ...


@runtime_checkable
class AcceptsBatchOnDevice(Protocol):
    """A verifier whose on-device decision keeps no per-sequence state (greedy), so that one call
    decides every sequence of a packed step: the step's kernels run once, not once per sequence."""

    def accept_batch_on_device(self, trees: Sequence[DeviceTree], logits: torch.Tensor,
                               cu_rows: Sequence[int]) -> list[torch.Tensor]:
        """logits [R, V] of S packed trees (sequence s's rows cu_rows[s] .. cu_rows[s + 1] - 1) ->
        [S] packed results, each exactly what `accept_on_device(trees[s], its rows, state)` gives."""
        ...


def accepts_batch_on_device(verifiers: Sequence[Verifier]) -> bool:
    """The batched engine may ask the first verifier for the whole step: all are of one class,
    which may accept on the device, and defines `accept_batch_on_device` no higher in its class
    tree than `accept_on_device` (a subclass that overrides the one-sequence form alone keeps it)."""
    first = verifiers[0]
    if not (isinstance(first, AcceptsBatchOnDevice) and accepts_on_device(first)):
        return False
    if any(type(v) is not type(first) for v in verifiers):
        return False
    return defined_below(first, "accept_batch_on_device", "accept_on_device")


def accepts_on_device(verifier: Verifier) -> bool:
    """The pipeline may call `accept_on_device`: the verifier has it, defined no higher in its
    class tree than `accept` (a subclass that overrides `accept` alone keeps the host path)."""
    if not isinstance(verifier, AcceptsOnDevice):
        return False
    return defined_below(verifier, "accept_on_device", "accept")


def defined_below(x: object, member: str, than: str) -> bool:
    """`member` is defined no higher in x's class tree than `than` (the class that defines it is
    `than`'s or a subclass of it), or one of them is defined by no class (an instance attribute).
    An optional device form is used only where this holds: a subclass that overrides the host form
    alone keeps the host path, instead of inheriting a device form that no longer matches it."""
    owner = {m: next((c for c in type(x).__mro__ if m in vars(c)), None) for m in (member, than)}
    return None in owner.values() or issubclass(owner[member], owner[than])


@runtime_checkable
class DraftsAhead(Protocol):
    """A drafter whose next round starts on the device before the host reads this round's result.
    What it needs there, the accepted path and the bonus token, `packed` holds on the device, so its
    device work (say, the context append and the next draft forward) is queued behind the
    acceptance, instead of after the read-back with the device idle. The pipeline calls it once per
    round on the device path, after `accept_on_device`, `stage_commit` and the read-back's copy are
    queued, before the host waits for that copy: the host reads the round's result while the
    device still runs what `draft_ahead` queued, so a drafter that brings its results to the host
    waits for its own copy (an event) before it reads them — in the batched engine too, whose step's
    read-back is queued before its drafters' next rounds (`DraftsAheadTogether`). The next round's `observe`
    and `propose` use what it queued when the round committed every token `packed` names (a
    round cut short by a stop token or the length limit ends the generation), and do the work
    themselves otherwise; a drafter that keeps the round's rows itself says so (`KeepsRowsAhead`)
    and then observes such a round with no rows."""

    def draft_ahead(self, hidden: torch.Tensor | None, packed: torch.Tensor, budget: int) -> None:
        """hidden [N, k, H]: the verify pass's hidden rows of the drafter's observed layers (None when
        it observes none); packed [2D + 3] int64 (layout above); budget: the next round's. No sync."""
        ...


@runtime_checkable
class KeepsRowsAhead(Protocol):
    """A `DraftsAhead` drafter whose `draft_ahead` keeps the round's accepted-path rows itself (say,
    appends them to its context on the device) when `keeps_rows_ahead` is true: after a round whose
    `draft_ahead` ran and that committed every node of its accepted path, its `observe` gets
    `hidden=None` — the pipeline gathers no committed rows for it (a device gather and its index
    upload a round fewer). Any other round's `observe` still gets the rows."""

    keeps_rows_ahead: bool


def rows_kept_ahead(drafter: object) -> bool:
    """The drafter keeps its committed rows itself after a drafted-ahead round (`KeepsRowsAhead`)."""
    return isinstance(drafter, DraftsAhead) and isinstance(drafter, KeepsRowsAhead) and drafter.keeps_rows_ahead is True


@runtime_checkable
class DraftsAheadTogether(Protocol):
    """`DraftsAhead` for the sequences of a batched step, in one call: drafters made alike (one per
    sequence) queue their next rounds as one batched device job (say, one draft forward for all)
    instead of one job each. The batch engine calls it on the step's first drafter with every
    drafter of the step (itself first) in the step's order, where `draft_ahead` would be called
    on each; a False return means it did nothing (these peers cannot draft together), and the
    engine calls `draft_ahead` on each instead. What each drafter's next `observe` and `propose`
    see is what its own `draft_ahead` would have left."""

    def draft_ahead_together(self, peers: list[Any], hidden: list[torch.Tensor | None], packed: list[torch.Tensor],
                             budget: int) -> bool:
        """peers: the drafters (self first); hidden, packed: each one's `draft_ahead` arguments. No sync."""
        ...


@runtime_checkable
class CommitsOnDevice(Protocol):
    """A KV cache that moves the kept pending entries on the device before the host knows which
    they are; the `commit(path)` that follows only does bookkeeping."""

    def stage_commit(self, keep: torch.Tensor) -> None:
        """keep [M <= n] int64 on the device, pending indices in [0, n): pending entry keep[j] becomes
        logical slot committed + j for j < M, no sync. Next comes `commit(keep[:k])`, k <= M."""
        ...


@runtime_checkable
class CommitsBatchOnDevice(Protocol):
    """A `CommitsOnDevice` cache whose sibling caches (one pool: `BatchedKVCache.sequences`) can
    stage a packed step's commits together: one launch for the step, not one per sequence."""

    def stage_commit_many(self, caches: Sequence[Any], keeps: torch.Tensor, moves: Sequence[tuple[int, int, int]]) -> bool:
        """keeps [K] int64 on the device; moves[s] = (offset, M_s, N_s) -> as
        `caches[s].stage_commit(keeps[offset : offset + M_s].clamp(0, N_s - 1))` for every s, no
        sync; False, with nothing done, where these caches cannot (the engine then asks each)."""
        ...
