"""What the GPU exactness tests share (tests/targets/test_exact_gpu.py, test_exact_batched_gpu.py): a
two-layer decoder at Qwen3-8B shapes in three forms over one set of weights, and a committed
context written by the fast path."""

from __future__ import annotations

import torch

from jetspec.core.interfaces import AttentionMeta
from jetspec.targets.decoder.config import DecoderConfig, RopeConfig
from jetspec.testing.exactness import random_decoder

QWEN3_8B_LIKE = DecoderConfig(
    architecture="qwen3", vocab_size=32768, hidden_size=4096, intermediate_size=12288, num_layers=2, num_heads=32,
    num_kv_heads=8, head_dim=128, max_positions=8192, rms_norm_eps=1e-6, qk_norm=True, rope=RopeConfig(theta=1e6),
)


def exact_graphed_fast():
    """(exact eager, exact with CUDA graphs, torch's kernels) over one set of random bf16 weights."""
    from jetspec.kernels.reference import TorchAttention
    from jetspec.targets.decoder.ops import TorchOps

    exact = random_decoder(QWEN3_8B_LIKE, "cuda", torch.bfloat16, exact=True)
    graphed = type(exact)(exact.model, exact.attention, exact.info, cuda_graphs=True)
    fast = type(exact)(exact.model, exact.attention, exact.info, cuda_graphs=False)
    fast.ops, fast.attention = TorchOps(), TorchAttention()
    return exact, graphed, fast


def fill(fast, cache, context: int, seed: int) -> None:
    """A committed context of `context` tokens, written by the fast (non-exact) path."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, QWEN3_8B_LIKE.vocab_size, (context,), generator=g).cuda()  # [context]
    for start in range(0, context, 1024):  # chunks: bounded memory
        n = min(1024, context - start)
        cache.begin(n)
        fast.forward(tokens[start : start + n], AttentionMeta.for_chain(n, start, "cuda"), cache)
        cache.commit(range(n))
