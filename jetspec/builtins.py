"""JetSpec's own components, registered through the same hooks third-party plugins use.

Heavy or optional modules (transformers, triton, the decoder) are imported inside factories, so
listing plugins stays cheap and an optional dependency is only needed when selected.
"""

from __future__ import annotations

from .caches.dense import DenseCacheOptions
from .caches.paged import PagedCacheOptions
from .core.hookspecs import hookimpl
from .core.registry import Implementation
from .drafters.head.options import DFlashOptions, EagleOptions, HeadOptions
from .drafters.ngram import NgramDrafter, NgramOptions
from .kernels.cute_backend import CuteAttentionOptions
from .kernels.reference import TorchAttention, TorchAttentionOptions
from .kernels.triton_backend import TritonAttentionOptions
from .scorers.accum_logp import AccumLogpOptions, AccumLogpScorer
from .scorers.best_first import BestFirstOptions, BestFirstScorer, ChainOptions, ChainScorer
from .scorers.capped import CappedOptions, CappedScorer
from .targets.decoder.loading import DecoderTargetOptions
from .targets.transformers_adapter import TransformersTargetOptions
from .verifiers.greedy import GreedyOptions, GreedyVerifier
from .verifiers.sampling import SamplingOptions, SamplingVerifier


def _load_decoder(options, attention):
    from .targets.decoder import load_decoder_target

    return load_decoder_target(options, attention)


def _load_transformers(options, attention):
    from .targets.transformers_adapter import load_transformers_target

    return load_transformers_target(options, attention)


def _jetspec_head(options, target):
    from .drafters.head.drafter import jetspec_drafter

    return jetspec_drafter(options, target)


def _dflash_head(options, target):
    from .drafters.head.drafter import dflash_drafter

    return dflash_drafter(options, target)


def _eagle_head(options, target):
    from .drafters.eagle import eagle_drafter

    return eagle_drafter(options, target)


def _dense_cache(options, info, capacity):
    from .caches.dense import DenseKVCache

    return DenseKVCache(info, capacity)


def _paged_cache(options, info, capacity):
    from .caches.paged import PagedKVCache

    return PagedKVCache(info, capacity, options)


def _triton_attention(options):
    import importlib.util
    import os

    import torch

    from .core.errors import IncompatibleError
    from .kernels.triton_backend import TritonAttention

    if importlib.util.find_spec("triton") is None:
        raise IncompatibleError("attention 'triton' needs the triton package: pip install 'jetspec[triton]'")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise IncompatibleError("attention 'triton' needs a CUDA GPU (or TRITON_INTERPRET=1 to run it on a CPU, slowly)")
    return TritonAttention(options)


def _cute_attention(options):
    from .core.errors import IncompatibleError
    from .kernels.cute_backend import CuteAttention, unavailable

    reason = unavailable()
    if reason:
        raise IncompatibleError(reason)
    return CuteAttention(options)


@hookimpl
def jetspec_targets():
    return [
        Implementation(
            "decoder",
            _load_decoder,
            DecoderTargetOptions,
            "our compact Llama / Qwen2 / Qwen3 decoder over the attention backend (default: SmolLM2-135M-Instruct)",
            provides=frozenset({"hidden_states", "attention_backend"}),
        ),
        Implementation(
            "transformers",
            _load_transformers,
            TransformersTargetOptions,
            "any Hugging Face causal LM through its own forward (fallback; slower)",
            provides=frozenset({"hidden_states"}),
        ),
    ]


@hookimpl
def jetspec_drafters():
    return [
        Implementation(
            "ngram",
            lambda o, target: NgramDrafter(o, target),
            NgramOptions,
            "prompt lookup: continuations of earlier matches of the current suffix (training-free)",
        ),
        Implementation(
            "jetspec",
            _jetspec_head,
            HeadOptions,
            "causal parallel draft head: one forward -> per-depth candidates (optional parent-conditioned rescoring)",
            requires=frozenset({"target:hidden_states"}),
        ),
        Implementation(
            "dflash",
            _dflash_head,
            DFlashOptions,
            "bidirectional parallel draft head (DFlash-style): one forward -> per-depth marginals",
            requires=frozenset({"target:hidden_states"}),
        ),
        Implementation(
            "eagle",
            _eagle_head,
            EagleOptions,
            "autoregressive draft head (EAGLE-style): one forward per depth, top-k expansion",
            requires=frozenset({"target:hidden_states"}),
        ),
    ]


@hookimpl
def jetspec_tree_scorers():
    return [
        Implementation("best-first", BestFirstScorer, BestFirstOptions, "exact top-B prefixes by cumulative log-prob"),
        Implementation("chain", ChainScorer, ChainOptions, "the rank-1 path only (linear speculation)"),
        Implementation("accum-logp", AccumLogpScorer, AccumLogpOptions, "each heap pop adds all of a node's children"),
        Implementation("capped", CappedScorer, CappedOptions, "best-first with fan-out capped by the top-2 log-prob gap"),
    ]


@hookimpl
def jetspec_verifiers():
    return [
        Implementation(
            "greedy", GreedyVerifier, GreedyOptions, "deepest path matching the target's argmax, plus its bonus token"
        ),
        Implementation(
            "sampling",
            SamplingVerifier,
            SamplingOptions,
            "lossless sampling (temperature, top-k, top-p, seed): walk the tree following the target's own draws",
            provides=frozenset({"sampling"}),
        ),
    ]


@hookimpl
def jetspec_kv_caches():
    return [
        Implementation(
            "dense", _dense_cache, DenseCacheOptions, "contiguous per-layer buffers; commit by compaction",
            provides=frozenset({"kv_rows"}),
        ),
        Implementation(
            "paged", _paged_cache, PagedCacheOptions, "block table of fixed-size pages; commit by gather or slot remap",
            provides=frozenset({"kv_rows", "paged"}),
        ),
    ]


@hookimpl
def jetspec_attention_backends():
    return [
        Implementation("torch", lambda o: TorchAttention(), TorchAttentionOptions, "plain PyTorch reference (any device, any cache)"),
        Implementation(
            "triton", _triton_attention, TritonAttentionOptions,
            "Triton paged tree attention, tree mask from the DFS intervals in-kernel (GPU, or CPU via TRITON_INTERPRET=1)",
            requires=frozenset({"kv_cache:kv_rows", "target:attention_backend"}),
        ),
        Implementation(
            "cute", _cute_attention, CuteAttentionOptions,
            "CuTe DSL paged tree attention (Hopper sm_90, bf16, head dim 64/128): faster than triton for trees "
            "(64, 256 nodes), slower for one-token decode; no exact mode (figures: bench/RESULTS.md)",
            requires=frozenset({"kv_cache:kv_rows", "target:attention_backend"}),
        ),
    ]
