"""The data that flows between the components of a decode pipeline (`interfaces.py` holds the
Protocols of the components themselves and re-exports these).

Shapes use: N tree/query tokens, T committed tokens, V vocab, H hidden size, Hq query heads,
Hkv key/value heads, D head dim, L layers, k fused hidden layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import DraftTree

@dataclass
class DecodeState:
    """What has been committed so far for one sequence.

    `tokens[-1]` is the root of the next round: committed, but its K/V is not in the cache yet,
    so `kv_len == len(tokens) - 1` between rounds. Components read it and never change it: the
    pipeline alone appends what a round commits (the `sampling` verifier reads its length to pick
    the round's uniforms, so even a change undone later alters the output).
    """

    tokens: list[int]  # prompt + generated tokens
    prompt_len: int

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]


@dataclass(frozen=True)
class Acceptance:
    """What a verifier keeps from one tree.

    * `path`: node indices root -> deepest accepted node (always starts with 0). These nodes'
      K/V are committed; the rest of the tree's K/V is discarded.
    * `bonus`: the target's own token after the deepest accepted node (the next root).
    * committed tokens this round = the drafts on `path[1:]` followed by `bonus`.
    """

    path: list[int]
    bonus: int

    def new_tokens(self, tree: DraftTree) -> list[int]:
        if len(self.path) == 1:  # no draft accepted (every plain round)
            return [self.bonus]
        tokens = tree.tokens.tolist()
        return [tokens[i] for i in self.path[1:]] + [self.bonus]

    @property
    def accepted_drafts(self) -> int:
        return len(self.path) - 1


@dataclass(frozen=True)
class AttentionMeta:
    """Where the N query tokens of one forward sit, for the attention backend.

    Query i attends to all `prefix_len` committed keys, and to pending key j (the j-th token of
    this forward, written at logical slot prefix_len + j) iff j <= i < j + subtree_sizes[j].
    Prefill is the chain case subtree_sizes[j] = N - j; decode is N = 1.
    """

    prefix_len: int
    positions: torch.Tensor  # [N] int64, RoPE positions (prefix_len + depth)
    subtree_sizes: torch.Tensor  # [N] int32/int64, DFS interval encoding of the tree mask
    # [1] int32 on the device: prefix_len again, for kernels replayed from a CUDA graph (which
    # must read T from memory, not from a launch argument baked in at capture). None: eager.
    prefix_len_t: torch.Tensor | None = None
    chain: bool = False  # the queries form a chain (prefill): query i's ancestors are 0..i

    def __post_init__(self) -> None:
        if not self.chain and self.positions.numel() == 1:  # one query (a plain step) is a chain: no ancestor table
            object.__setattr__(self, "chain", True)

    @staticmethod
    def for_tree(tree: DraftTree, prefix_len: int, device: torch.device | str = "cpu") -> "AttentionMeta":
        return AttentionMeta(
            prefix_len=prefix_len,
            positions=tree.position_ids(prefix_len).to(device),
            subtree_sizes=tree.subtree_sizes.to(device),
        )

    @staticmethod
    def for_chain(n: int, prefix_len: int, device: torch.device | str = "cpu") -> "AttentionMeta":
        ar = torch.arange(n, device=device)
        return AttentionMeta(prefix_len=prefix_len, positions=ar + prefix_len, subtree_sizes=n - ar, chain=True)

    @property
    def num_queries(self) -> int:
        return int(self.positions.numel())


@dataclass(frozen=True)
class TargetInfo:
    """Identity and geometry of a target model (what caches, drafters and heads need)."""

    name: str  # identity recorded in head checkpoints, e.g. "SmolLM2-135M-Instruct"
    architecture: str  # e.g. "llama", "qwen2", "qwen3"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    dtype: torch.dtype
    device: torch.device
    eos_token_ids: tuple[int, ...] = ()
    fingerprint: str = ""  # hash of config + a weight sample; heads check it
    # every node's logits equal, bit for bit, those of a one-token step at the same prefix
    # (row- and position-invariant kernels: `jetspec.core.invariant`)
    exact: bool = False
    # ranks that each hold 1/tensor_parallel of the KV heads (`SpansRanks`); num_kv_heads stays
    # the model's own count (a head checkpoint's identity), `kv_heads_here` is what a cache holds
    tensor_parallel: int = 1

    @property
    def kv_heads_here(self) -> int:
        """KV heads this process's cache holds: num_kv_heads / tensor_parallel."""
        return self.num_kv_heads // self.tensor_parallel


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [N, V] float, next-token logits at each query token
    hidden: torch.Tensor | None = None  # [N, k, H] hidden states of the requested layers, or None
