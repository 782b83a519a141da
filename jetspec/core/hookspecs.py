"""Plugin hooks. A plugin is a module or object with functions of these names decorated by
`jetspec.hookimpl`; each returns a list of `jetspec.Implementation`s it provides.

JetSpec's own built-ins register through these same hooks (module `jetspec.builtins`), and
third-party packages are discovered through the `jetspec` entry-point group.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("jetspec")
hookimpl = pluggy.HookimplMarker("jetspec")


@hookspec
def jetspec_targets():
    """Target loaders: factory(options, attention) -> Target."""


@hookspec
def jetspec_drafters():
    """Drafters: factory(options, target) -> Drafter."""


@hookspec
def jetspec_tree_scorers():
    """Tree scorers: factory(options) -> TreeScorer."""


@hookspec
def jetspec_verifiers():
    """Verifiers: factory(options) -> Verifier."""


@hookspec
def jetspec_kv_caches():
    """KV-cache backends: factory(options, info: TargetInfo, capacity: int) -> KVCache."""


@hookspec
def jetspec_attention_backends():
    """Attention backends: factory(options) -> AttentionBackend."""


# component kind (as named in configs) -> the hook that registers it
HOOK_OF_KIND = {
    "target": "jetspec_targets",
    "drafter": "jetspec_drafters",
    "scorer": "jetspec_tree_scorers",
    "verifier": "jetspec_verifiers",
    "kv_cache": "jetspec_kv_caches",
    "attention": "jetspec_attention_backends",
}
KINDS = tuple(HOOK_OF_KIND)
