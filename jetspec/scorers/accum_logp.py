"""`accum-logp`: the released code's tree builder. A max-heap of nodes on cumulative log-prob;
each pop adds ALL of the node's children (at most `fanout`), best first, until the budget is spent.
Cheaper than exact best-first (one pop per expanded node, not per node), but a pop may spend budget
on weak siblings of a strong node."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..core.interfaces import Proposal
from ..core.tree import DraftTree
from ..core.tree_search import accum_logp


class AccumLogpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fanout: int | None = Field(None, ge=1, le=4096)  # children added per pop (None: all the proposal offers)


class AccumLogpScorer:
    def __init__(self, options: AccumLogpOptions | None = None):
        self.options = options or AccumLogpOptions()

    def build(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        return accum_logp(proposal, root, budget, self.options.fanout)
