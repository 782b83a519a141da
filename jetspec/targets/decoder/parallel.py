"""Tensor parallelism for the decoder: each of R ranks holds 1/R of every layer.

A layer is split so that it needs ONE all-reduce per block (Megatron's pairing):

    attention   q, k, v   column-parallel: rank r computes its heads, Hq/R query heads and the
                          Hkv/R KV heads they read (GQA groups never straddle ranks), and keeps
                          those heads' K/V in its own cache (`TargetInfo.kv_heads_here`)
                o         row-parallel:  y_r = attn_r · W_o[:, cols of r]^T     [N, H] partial
                          h = x + Σ_r y_r                                        all-reduce
    MLP         gate, up  column-parallel: I/R intermediate channels per rank
                down      row-parallel:  y_r = act_r · W_down[:, I/R cols of r]^T,
                          out = h + Σ_r y_r                                       all-reduce

A rank's model is an ordinary `DecoderModel` of the local config (heads and intermediate size
divided by R) loaded with its slices of the checkpoint (`shard`), plus `RowParallel` on its o and
down projections. Biases of the row-parallel layers are added once (on rank 0; zero elsewhere).

Replicated on every rank: the embedding, the norms and the LM head. Each rank computes the whole
logits [N, V] from the whole (all-reduced) final hidden state. Why not vocab-parallel with a
gather: (1) the logits then come out identical on every rank with no collective, so acceptance
needs none either; (2) `LendsEmbeddings` (`embed`, `lm_head`) stays collective-free, so the draft
heads can run on rank 0 alone; (3) a gather of [N, V] float32 logits is N·V·4 bytes per round
(256 nodes x 152k vocab: 155 MB), more than the V·H weight read it saves at large trees. The price:
each rank reads the whole LM head (Qwen3-8B: 1.2 GB of 16 GB) and holds a copy. A vocab-parallel
head with a distributed argmax (greedy needs [N, 2] per rank, not the logits) is the follow-up
for 70B-class targets.

Sum order: rank r's partial is a split-K piece of the one-process GEMM, so TP logits equal the
one-process logits to fp32 rounding, not bit for bit (the K reduction is cut in R pieces and the
pieces summed by the all-reduce). With R = 2 the all-reduce is a + b, commutative: every rank
gets the same bits, and a token's bits still depend on its own row alone (`exact` keeps holding).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ...core.distributed import Ranks, all_reduce_sum
from ...core.errors import ConfigError
from .config import DecoderConfig

# parameter name (no `layers.{l}.` prefix) -> the dimension cut into R contiguous slices:
# 0 = output rows (column-parallel), 1 = input columns (row-parallel)
SPLIT = {
    "self_attn.q_proj.weight": 0, "self_attn.q_proj.bias": 0,
    "self_attn.k_proj.weight": 0, "self_attn.k_proj.bias": 0,
    "self_attn.v_proj.weight": 0, "self_attn.v_proj.bias": 0,
    "self_attn.o_proj.weight": 1,
    "mlp.gate_proj.weight": 0, "mlp.gate_proj.bias": 0,
    "mlp.up_proj.weight": 0, "mlp.up_proj.bias": 0,
    "mlp.down_proj.weight": 1,
}  # fmt: skip
ONCE = ("self_attn.o_proj.bias", "mlp.down_proj.bias")  # added after the reduction's inputs: rank 0 only


def allowed_degrees(cfg: DecoderConfig) -> list[int]:
    """Every R that divides both the KV heads and the intermediate size."""
    return [r for r in range(1, cfg.num_kv_heads + 1) if cfg.num_kv_heads % r == 0 and cfg.intermediate_size % r == 0]


def check_degree(cfg: DecoderConfig, degree: int, world: int) -> None:
    """One-line ConfigError unless `degree` splits this model and matches the process group."""
    allowed = allowed_degrees(cfg)
    if degree not in allowed:
        raise ConfigError(f"tensor_parallel = {degree} must divide the model's {cfg.num_kv_heads} KV heads and its "
                          f"intermediate size {cfg.intermediate_size}; allowed: {', '.join(map(str, allowed))}")
    if degree != world:
        how = "a single process" if world == 1 else f"{world} processes"
        raise ConfigError(f"tensor_parallel = {degree} needs {degree} processes (torchrun --nproc-per-node {degree} "
                          f"-m jetspec.cli ...), this is {how}; tensor_parallel must equal WORLD_SIZE")


def local_config(cfg: DecoderConfig, degree: int) -> DecoderConfig:
    """The config of one rank's slice: heads and intermediate size divided by `degree`."""
    return replace(cfg, num_heads=cfg.num_heads // degree, num_kv_heads=cfg.num_kv_heads // degree,
                   intermediate_size=cfg.intermediate_size // degree)


def shard(name: str, tensor, rank: int, degree: int) -> torch.Tensor:
    """Rank `rank`'s part of checkpoint tensor `name` (model naming, no `model.` prefix). `tensor`
    is a torch.Tensor or a safetensors slice (`safe_open(...).get_slice(key)`): then only this
    rank's rows or columns are read from the file."""
    part = name.split(".", 2)[2] if name.startswith("layers.") else name  # "layers.3.mlp.x" -> "mlp.x"
    if part in ONCE and rank != 0:
        return torch.zeros_like(tensor[:])
    dim = SPLIT.get(part)
    if dim is None:
        return tensor[:]  # replicated: embedding, norms (q/k norms are per head: [D]), LM head
    size = (tensor.shape if isinstance(tensor, torch.Tensor) else tensor.get_shape())[dim] // degree
    cut = slice(rank * size, (rank + 1) * size)
    return (tensor[cut] if dim == 0 else tensor[:, cut]).contiguous()


class RowParallel(nn.Module):
    """The all-reduce after a row-parallel projection: partial [N, H] -> Σ over ranks, in place."""

    def __init__(self, ranks: Ranks):
        super().__init__()
        self.ranks = ranks

    def forward(self, partial: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(partial, self.ranks)


def parallelize(model: nn.Module, ranks: Ranks) -> None:
    """Give each layer's o and down projections their all-reduce (the model holds rank's slices)."""
    for layer in model.layers:
        layer.self_attn.reduce = RowParallel(ranks)
        layer.mlp.reduce = RowParallel(ranks)
