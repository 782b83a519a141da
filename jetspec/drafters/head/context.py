"""The head's own KV cache of the fused context, and the `observe`/`reset` half of every head
drafter: after prefill and after each round, the target hidden states of the tokens whose K/V was
just committed are fused and projected to each head layer's K/V, and appended.

Invariant between rounds: `length == len(state.tokens) - 1` (the root's hidden is not known yet),
the same as the target's committed KV length; the anchor (root) sits at position `length`.
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.errors import InputError
from ...core.interfaces import DecodeState
from .model import DraftHead


class ContextCache:
    """Per head layer K/V of the fused context: buffers [capacity, Hkv, D], `length` rows used.

    The buffers outlive `reset` and are reallocated only to grow (doubling; `version` counts the
    reallocations), so CUDA graphs that read them whole stay valid from one generation to the
    next. Rows past `length` hold zeros or an earlier generation's K/V, never uninitialised
    memory: a graph attends over the whole buffer with those keys masked, and a NaN there would
    survive the mask (0 * NaN = NaN)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 1024):  # fmt: skip
        self._shape = (num_kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        zeros = lambda: torch.zeros(capacity, *self._shape, dtype=dtype, device=device)  # noqa: E731
        self._k = [zeros() for _ in range(num_layers)]  # per layer [capacity, Hkv, D]
        self._v = [zeros() for _ in range(num_layers)]
        self.length = 0
        self.version = 0

    @property
    def capacity(self) -> int:
        return self._k[0].shape[0]

    def reset(self) -> None:
        self.length = 0

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """kv: per layer (k, v) [1, n, Hkv, D]."""
        n = kv[0][0].shape[1]
        if self.length + n > self.capacity:  # grow by doubling
            cap = self.capacity
            while cap < self.length + n:
                cap *= 2
            grow = lambda t: torch.cat([t[: self.length], t.new_zeros(cap - self.length, *self._shape)])  # noqa: E731
            self._k, self._v = [grow(t) for t in self._k], [grow(t) for t in self._v]
            self.version += 1
        for layer, (k, v) in enumerate(kv):
            self._k[layer][self.length : self.length + n] = k[0]
            self._v[layer][self.length : self.length + n] = v[0]
        self.length += n

    def context(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v) [1, length, Hkv, D] views."""
        return [(k[None, : self.length], v[None, : self.length]) for k, v in zip(self._k, self._v)]

    def buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v) [1, capacity, Hkv, D]: the whole buffers (rows >= length to be masked)."""
        return [(k[None], v[None]) for k, v in zip(self._k, self._v)]


class ContextDrafter:
    """Shared by the head drafters: owns the head, the cache, and the target's embedding/LM head."""

    def __init__(self, head: DraftHead, target: Any):
        info = target.info
        self.head = head.to(device=info.device, dtype=info.dtype).eval()
        self.target = target
        self.config = head.config
        self.hidden_layers: tuple[int, ...] = tuple(head.config.target_layers)
        c = head.config
        self.cache = ContextCache(c.num_layers, c.num_kv_heads, c.head_dim, info.dtype, info.device)

    def reset(self, state: DecodeState) -> None:
        self.cache.reset()

    @torch.no_grad()
    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        """Append the fused context of the newly committed tokens. `hidden` [n, k, H] may cover
        more tokens than were committed (a round cut short by max_new_tokens); the extra rows
        are dropped. Fewer is an error: the cache would fall out of step with the target's."""
        need = len(state.tokens) - 1 - self.cache.length
        n = 0 if hidden is None else hidden.shape[0]
        if n < need:
            raise InputError(
                f"head context out of step: {self.cache.length} cached + {n} new hidden states, "
                f"but {len(state.tokens) - 1} tokens are committed before the root"
            )
        if need == 0:
            return
        pos = torch.arange(self.cache.length, self.cache.length + need, device=self.cache._device)[None]  # [1, need]
        fused = self.head.fuse_context(hidden[:need].to(self.cache._device)[None])  # [1, need, H]
        self.cache.append(self.head.context_kv(fused, pos))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [n] -> [n, H] through the target's own embedding."""
        return self.target.embed(tokens.to(self.cache._device)).to(self.cache._dtype)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, H] head outputs -> [n, V] float32 log-probs through the target's own LM head."""
        return torch.log_softmax(self.target.lm_head(h).float(), dim=-1)
