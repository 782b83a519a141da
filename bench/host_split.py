"""Where a batched step's host time goes, without a profiler's bias (issue 20): named engine functions
timed by a wrapper each (two `perf_counter` reads a call), not every Python call as cProfile does.

`bench.batched_throughput --split` runs its timed runs inside `split_timers()` and adds to each row
`host_split` = {name: [calls, seconds]}: a function's time INCLUSIVE of what it calls (so `grow`
holds `propose_flat`; names nest as the engine does, see SPLIT), on the real device — GPU host
costs such as launches and pinned copies included, which a CPU run cannot show. A wrapper costs
~0.3 µs a call; the wrapped set is small (a few calls per sequence-round), so the run's tok/s stays
close to an unsplit one, but rows carry `split: true` and are not compared with unsplit ones.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager

# "module:Class.attr" or "module:function" (patched where the engine looks it up: a function imported
# by name into batch_engine is patched there). Indented names run inside the one above them.
SPLIT = (
    "jetspec.caches.paged:PagedKVCache.begin",                      # draft: rows reserved per sequence
    "jetspec.core.batch_grow:Grower.grow",                          # draft: a grown step's proposals, pack, build launch
    "jetspec.drafters.head.drafter:HeadDrafter.propose_on_device",  #   per sequence
    "jetspec.drafters.head.drafter:HeadDrafter._draft",             #     a draft not queued ahead (a sequence's first)
    "jetspec.drafters.ngram:NgramDrafter.propose_flat",             #     its prompt lookup's trie
    "jetspec.drafters.head.pool_lookup:LookupHistory.trie",          #     or its trie on the device (`lookup_on_device`)
    "jetspec.core.batch_grow:_packed",                              #   the step's tries packed and checked
    "jetspec.core.batch_grow:stacked",                              #   or the step's device tries stacked
    "jetspec.scorers.best_first:BestFirstScorer.build_on_device",   #   the device build's launch (graph replay)
    "jetspec.core.batch_trees:StepTrees._tree",                     # draft + build of a host-built tree
    "jetspec.core.batch:BatchMeta.pack",                            # verify: the step's attention metadata
    "jetspec.core.batch_engine:BatchEngine._forward",               # verify: the packed forward's launch
    "jetspec.targets.decoder.batch_graphs:BatchGraphForward._fill",  #   its graph's static inputs
    "jetspec.core.batch_engine:start_on_device",                    # accept: acceptance queued on the device
    "jetspec.core.batch_engine:draft_ahead_step",                   #   the next drafts queued (pooled head)
    "jetspec.drafters.head.pool:ContextPool.draft_ahead",           #     the pool's one job
    "jetspec.drafters.head.pool_lookup:PooledLookup.step",          #       the lookup's job (`lookup_on_device`)
    "jetspec.core.batch_engine:finish_on_device",                   # accept: the read-back checked
    "jetspec.core.batch_trees:StepTrees._read_trees",               # accept: a grown step's trees read back, checked
    "jetspec.core.batch_engine:committed_rows",                     # accept: the kept hidden rows
    "jetspec.core.batch_engine:BatchEngine._commit",                # commit per sequence
    "jetspec.caches.paged:PagedKVCache.commit",                     #   the cache's bookkeeping
    "jetspec.drafters.head.context:ContextDrafter.observe",         #   the drafter's
    "jetspec.core.pipeline:Pipeline._result",                       # a finished sequence's result (text)
    "jetspec.core.cuda_graphs:capture",                             # any CUDA graph captured (inside the above)
)


@contextmanager
def split_timers(names: tuple[str, ...] = SPLIT) -> Iterator[dict[str, list]]:
    """Within the block every named function is timed -> {name: [calls, seconds, slowest call's seconds]}
    (filled as it runs; the slowest call tells a one-off inside the run, such as a compile, from a steady cost);
    the originals are put back on exit. A name that does not resolve is an error, not a silent gap."""
    totals: dict[str, list] = {}
    undo = []
    try:
        for name in names:
            module_name, path = name.split(":")
            owner = importlib.import_module(module_name)
            *outer, attr = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            raw = inspect.getattr_static(owner, attr)  # a staticmethod stays one
            fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
            if inspect.isgeneratorfunction(fn):
                raise ValueError(f"{name} is a generator function: a wrapper would time its creation only")
            totals[path] = counts = [0, 0.0, 0.0]
            wrapped = _timed(fn, counts)
            setattr(owner, attr, type(raw)(wrapped) if isinstance(raw, (staticmethod, classmethod)) else wrapped)
            undo.append((owner, attr, raw))
        yield totals
    finally:
        for owner, attr, raw in reversed(undo):
            setattr(owner, attr, raw)


def _timed(fn, counts: list):
    clock = time.perf_counter

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            t = clock() - t0
            counts[0] += 1
            counts[1] += t
            counts[2] = max(counts[2], t)

    return timed
