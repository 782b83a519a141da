"""Acceptance of a packed step: every sequence's verifier decides on its own rows of the logits.

Host path: `verifier.accept(tree, logits[rows of s], state)` per sequence, as `Pipeline` does.

Device path (a verifier with `accept_on_device`, when `generation.accept_on_device` says so): each
sequence's tree is on the device (`TreeUpload.many`: the step's trees end to end, one copy),
each verifier returns its packed result [2 D_s + 3] int64 there (`on_device.py`; verifiers with
`accept_batch_on_device`, greedy, return all of them from one call), a cache with
`stage_commit` moves its kept K/V behind it (caches with `stage_commit_many`, the paged pool's:
the whole step's moves in one call), and ONE read-back of all the packed results, laid end
to end, brings the whole step's paths to the host: the step waits for the device once, not once
per sequence, and only for the acceptance (the read-back is queued before the K/V moves and the
drafters' next rounds). `start_on_device` queues all of it, `finish_on_device` waits and checks:
with `generation.overlap` the other half's step is launched in between.

A sequence whose verifier fails (an exception, a malformed result, a path that is not in its
tree) gets its error; the others are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .batch import BatchMeta
from .checks import Blame, check_acceptance, conforms
from .errors import JetSpecError, PluginError
from .interfaces import Acceptance, CommitsBatchOnDevice, CommitsOnDevice, DecodeState, KVCache, Verifier
from .on_device import DeviceTree, Readback, to_device, unpack
from .tree import DraftTree

Accepted = tuple[Acceptance | JetSpecError, torch.Tensor | None]  # (acceptance or its error, path on the device or None)


def accept_on_host(verifiers: list[Verifier], trees: list[DraftTree], logits: torch.Tensor, meta: BatchMeta,
                   states: list[DecodeState], who: str, vocab: int) -> list[Accepted]:
    out: list[Accepted] = []
    for s, (verifier, tree, state) in enumerate(zip(verifiers, trees, states)):
        try:
            with Blame(who, "in accept"):
                acc = verifier.accept(tree, logits[meta.rows(s)], state)
            out.append((check_acceptance(acc, tree, vocab, who), None))
        except JetSpecError as e:
            out.append((e, None))
    return out


def _results(verifiers: list[Verifier], dtrees: list[DeviceTree], logits: torch.Tensor, meta: BatchMeta,
             states: list[DecodeState], who: str, batch: bool) -> list[torch.Tensor | JetSpecError]:
    """Each sequence's packed result (or its error): from one call for the whole step where the
    verifiers allow it (`batch`: the engine's `accepts_batch_on_device`, once per run), else one
    call per sequence."""
    if batch:
        try:
            with Blame(who, "in accept_batch_on_device"):
                out = verifiers[0].accept_batch_on_device(dtrees, logits, meta.cu_rows)
            if not (isinstance(out, list) and len(out) == len(dtrees)):
                got = len(out) if isinstance(out, list) else type(out).__name__
                raise PluginError(f"{who} returned {got} from accept_batch_on_device; expected a list of {len(dtrees)} tensors")
            return out
        except JetSpecError as e:  # the step's one call failed: every sequence of it fails with it
            return [e] * len(dtrees)
    out: list[torch.Tensor | JetSpecError] = []
    for s, (verifier, dtree, state) in enumerate(zip(verifiers, dtrees, states)):
        try:
            with Blame(who, "in accept_on_device"):
                out.append(verifier.accept_on_device(dtree, logits[meta.rows(s)], state))
        except JetSpecError as e:
            out.append(e)
    return out


def start_on_device(verifiers: list[Verifier], dtrees: list[DeviceTree], logits: torch.Tensor,
                    meta: BatchMeta, states: list[DecodeState], caches: list[KVCache], readback: Readback,
                    who: str, batch: bool = False,
                    ahead: Callable[[list[tuple[int, torch.Tensor]]], None] | None = None) -> list[torch.Tensor | JetSpecError]:
    """Queue the step's device work — each result, the copy of the results to the host (`readback.start`),
    the staged K/V moves, `ahead([(s, packed_s), ...])` over the well-formed results (the drafters' next
    rounds, `batch_ahead.py`; it keeps their errors) — with no wait -> per sequence its path on the device
    [D_s + 1], or its error (what `finish_on_device` takes). The read-back is queued before the moves and
    the drafts, so the host's one wait is for the acceptance alone while the device goes on with them."""
    paths: list[torch.Tensor | JetSpecError] = []  # per sequence: its path on the device [D_s + 1], or its error
    staged: list[tuple[KVCache, int, int, int]] = []  # (cache, offset of its path in the step's results, D_s + 1, N_s)
    made: list[tuple[int, torch.Tensor]] = []  # (sequence, its well-formed result [2 D_s + 3] int64 on the device)
    results = _results(verifiers, dtrees, logits, meta, states, who, batch)
    offset = 0
    for s, (p, dtree, cache) in enumerate(zip(results, dtrees, caches)):
        d = dtree.max_depth
        try:
            if isinstance(p, JetSpecError):
                raise p
            if not (isinstance(p, torch.Tensor) and p.shape == (2 * d + 3,) and p.dtype == torch.int64):
                got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise PluginError(f"{who} returned {got} from accept_on_device; expected an int64 tensor of shape [{2 * d + 3}]")
        except JetSpecError as e:
            paths.append(e)
            continue
        if dtree.size > 1 and conforms(cache, CommitsOnDevice):
            staged.append((cache, offset + 1, d + 1, dtree.size))
        made.append((s, p))
        paths.append(p[1 : d + 2])  # [D + 1]; its first k entries are checked below
        offset += 2 * d + 3
    flat = torch.cat([p for _, p in made]) if made else None  # [sum 2 D_s + 3]: the step's results end to end
    if made:  # first: the step's one wait is for the acceptance alone; the K/V moves and the next drafts below
        readback.start(flat)  # run on the device while the host reads it (they are read there, in stream order)
    if staged:  # each kept K/V moved behind its path (clamped: a wrong path fails the check, not an index)
        first = staged[0][0]
        if not (conforms(first, CommitsBatchOnDevice)
                and first.stage_commit_many([c for c, *_ in staged], flat, [m for _, *m in staged])):
            for cache, o, m, n in staged:
                cache.stage_commit(flat[o : o + m].clamp(0, n - 1))
    if ahead is not None and made:  # behind the read-back: a drafter's host copy of its drafts has an event of its own
        ahead(made)
    return paths


def finish_on_device(paths: list[torch.Tensor | JetSpecError], trees: list[DraftTree], dtrees: list[DeviceTree],
                     readback: Readback, who: str, vocab: int) -> list[Accepted]:
    """Wait for the copy `start_on_device` queued (the step's one wait for the device) and check
    each sequence's acceptance against its tree."""
    values = readback.wait() if any(isinstance(p, torch.Tensor) for p in paths) else []
    out: list[Accepted] = []
    start = 0
    for tree, dtree, path in zip(trees, dtrees, paths):
        if isinstance(path, JetSpecError):
            out.append((path, None))
            continue
        end = start + 2 * dtree.max_depth + 3
        nodes, tokens = unpack(values[start:end])
        start = end
        try:
            out.append((check_acceptance(Acceptance(path=nodes, bonus=tokens[-1] if tokens else -1), tree, vocab, who), path))
        except JetSpecError as e:
            out.append((e, None))
    return out


def committed_rows(hidden: torch.Tensor | None, meta: BatchMeta, accepted: list[Acceptance | JetSpecError]) -> list[torch.Tensor | None]:
    """Each sequence's committed nodes' hidden rows [k_s, k, H] (what its drafter observes), from the
    step's packed rows hidden [R, k, H], in ONE device gather for the whole step (the host has every
    accepted path once the read-back is in) -> per sequence a view, or None (no hidden rows, or its
    acceptance failed)."""
    if hidden is None:
        return [None] * len(accepted)
    rows: list[int] = []  # the packed row of every committed node, sequence after sequence
    counts: list[int] = []  # k_s of each sequence whose acceptance stands
    for s, acc in enumerate(accepted):
        if not isinstance(acc, JetSpecError):
            first = meta.cu_rows[s]
            rows.extend([first + i for i in acc.path])
            counts.append(len(acc.path))
    if not counts:
        return [None] * len(accepted)
    index = to_device(torch.tensor(rows, dtype=torch.int64), hidden.device)  # [sum k_s]
    views = iter(hidden.index_select(0, index).split(counts))  # [k_s, k, H] each: one call for the step, not one per sequence
    return [None if isinstance(acc, JetSpecError) else next(views) for acc in accepted]
