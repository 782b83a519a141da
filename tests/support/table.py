"""`TableTarget`: a lookup-table "model" for statistical tests of sampling.

Its next-token logits are a fixed random function of the WHOLE context (prompt + generated),
so the exact law of the first k generated tokens is computable by enumeration, the logits of a
tree node are bit-identical to those at the same prefix in plain decoding, and a forward costs
microseconds. It still goes through the real pipeline machinery: the token ids are stored in the
KV cache as keys (1 layer, 1 head, head_dim 1), and each query's context is read back from the
cache as committed prefix + its tree ancestors (the interval rule) — so a wrong KV commit or a
wrong tree mask changes the distribution and the statistical tests catch it.
"""

from __future__ import annotations

import torch

from jetspec.core.interfaces import AttentionMeta, KVCache, TargetInfo, TargetOutput


class TableTarget:
    tokenizer = None
    provides = ()

    def __init__(self, vocab: int = 8, seed: int = 0, spread: float = 1.5):
        self.seed, self.spread = seed, spread
        self.info = TargetInfo(
            name=f"table-{vocab}-{seed}", architecture="table", vocab_size=vocab, hidden_size=1, num_layers=1,
            num_kv_heads=1, head_dim=1, max_positions=4096, dtype=torch.float64, device=torch.device("cpu"),
        )
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}

    def logits(self, context: tuple[int, ...]) -> torch.Tensor:
        """[V] float32 logits after `context` (N(0, spread^2) per token, seeded by the context)."""
        row = self._memo.get(context)
        if row is None:
            g = torch.Generator().manual_seed(hash((self.seed, *context)) & (2**62 - 1))  # int tuples hash stably
            row = self._memo[context] = (torch.randn(self.info.vocab_size, generator=g) * self.spread).float()
        return row

    def forward(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers=()) -> TargetOutput:
        n = tokens.numel()
        ids = tokens.to(torch.float64).view(n, 1, 1)  # [n, 1, 1]: the token id is the key
        cache.write(0, ids, torch.zeros_like(ids))
        keys, _ = cache.read(0)  # [T + n, 1, 1]
        seen = [int(t) for t in keys.view(-1).tolist()]
        committed, pending = seen[: meta.prefix_len], seen[meta.prefix_len :]
        sizes = meta.subtree_sizes.tolist()
        rows = []
        for i in range(n):
            ancestors = [pending[j] for j in range(i + 1) if i < j + sizes[j]]  # j <= i < j + size[j]
            rows.append(self.logits(tuple(committed + ancestors)))
        return TargetOutput(logits=torch.stack(rows))  # [n, V]


def exact_law(next_probs, prompt: tuple[int, ...], k: int, vocab: int, eos: int | None = None) -> dict[tuple[int, ...], float]:
    """P(first k generated tokens = s) = prod_j next_probs(prompt + s_<j)[s_j], for all s in V^k;
    a sequence that reaches `eos` ends there (generation stops). `next_probs(context) -> [V]`
    probabilities (the target's warped distribution)."""
    law: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(k):
        nxt = {}
        for s, ps in law.items():
            if s and s[-1] == eos:
                nxt[s] = ps
                continue
            probs = next_probs(prompt + s).double().tolist()
            for x in range(vocab):
                if probs[x] > 0:
                    nxt[s + (x,)] = ps * probs[x]
        law = nxt
    return law


__all__ = ["TableTarget", "exact_law"]
