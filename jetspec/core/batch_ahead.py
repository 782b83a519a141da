"""The drafters' next rounds in a batched step, queued before its one read-back (`DraftsAhead`).

Drafters made alike that can draft together (`DraftsAheadTogether`, e.g. head drafters sharing one
head: one batched draft forward instead of one per sequence) get one call for the whole step;
otherwise, or when they decline, each drafter's own `draft_ahead`. A drafter's error fails its own
sequence (a together call's error: every sequence of that call), never the step.
"""

from __future__ import annotations

import torch

from .checks import Blame
from .errors import JetSpecError, PluginError
from .on_device import DraftsAheadTogether


def draft_ahead_step(drafters: list, hidden: list[torch.Tensor | None], made: list[tuple[int, torch.Tensor]],
                     budget: int, who: str) -> dict[int, JetSpecError]:
    """drafters[i], hidden[i] (its tree's hidden rows [N_i, k, H] or None): those of the step's
    sequence made[i][0], whose acceptance result [2 D_i + 3] is made[i][1] -> {sequence: error}."""
    failed: dict[int, JetSpecError] = {}
    packed = [p for _, p in made]
    if len(drafters) > 1 and isinstance(drafters[0], DraftsAheadTogether):
        try:
            with Blame(who, "in draft_ahead_together"):
                done = drafters[0].draft_ahead_together(drafters, hidden, packed, budget)
            if not isinstance(done, bool):
                raise PluginError(f"{who} returned {type(done).__name__} from draft_ahead_together; expected True (drafted) or False")
        except JetSpecError as e:
            return {s: e for s, _ in made}
        if done:
            return failed
    for (s, p), drafter, h in zip(made, drafters, hidden):
        try:
            with Blame(who, "in draft_ahead"):
                drafter.draft_ahead(h, p, budget)
        except JetSpecError as e:
            failed[s] = e
    return failed
