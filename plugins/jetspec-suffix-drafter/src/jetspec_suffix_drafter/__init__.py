"""JetSpec `suffix` drafter: continuations of the longest earlier matches of the current suffix."""

from .automaton import SuffixAutomaton
from .drafter import SuffixDrafter, SuffixOptions

__all__ = ["SuffixAutomaton", "SuffixDrafter", "SuffixOptions"]
