"""The hook JetSpec calls: this module is the `jetspec` entry point of the package."""

import jetspec

from .drafter import SuffixDrafter, SuffixOptions


@jetspec.hookimpl
def jetspec_drafters():
    return [
        jetspec.Implementation(
            "suffix",
            SuffixDrafter,  # factory(options, target) -> Drafter
            SuffixOptions,
            "longest earlier matches of the current suffix (suffix automaton), weighted by length and frequency",
        )
    ]
