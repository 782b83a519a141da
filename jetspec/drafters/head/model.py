"""`DraftHead`: the small transformer a head drafter runs, and `HeadConfig`, its architecture.

    fused_t = RMSNorm( W_fuse [h_t^(l1) ; ... ; h_t^(lk)] )       W_fuse: k*H -> H, one per committed token t
    per head layer i:  K/V_ctx^i = RoPE(W_k^i fused), W_v^i fused  (the prefix every query may read)
    block inputs x_j (anchor / MASK / drafted token embeddings) at RoPE positions pos_j
    queries come only from the block; the bool mask says which context keys and block keys each
    block input sees (see masks.py); output = RMSNorm(last layer), to be fed to the TARGET's LM head.

Three kinds share this module (`HeadConfig.kind`):
* "causal" (JetSpec): block [anchor, MASK x (B-1)], causal inside the block; slot d -> depth d.
* "dflash": the same block, bidirectional inside the block.
* "eagle": autoregressive; inputs are real tokens [anchor, t1, t2, ...], input j -> depth j + 1.
The head owns neither the token embedding nor the LM head: it uses the target's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ...core.layer_math import rope_cos_sin, rope_frequencies
from .layers import DecoderLayer, RMSNorm, folded_bias

KINDS = ("causal", "dflash", "eagle")
# what a head.json may ask for, checked before anything is allocated (`HeadConfig._check_sizes`)
SIZE_LIMITS = {
    "hidden_size": 1 << 16, "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 1024,
    "intermediate_size": 1 << 18, "num_layers": 32, "block_size": 256,
}  # fmt: skip
MAX_PARAMETERS = 4_000_000_000  # 16 GB in float32; the published Qwen3-8B head is ~1B


def spaced_layers(num_target_layers: int, k: int) -> tuple[int, ...]:
    """k target layers evenly spaced from 1 to N - 3 (the middle one when k = 1)."""
    n = num_target_layers
    if k == 1 or n < 4:
        return (n // 2,) if k == 1 else tuple(sorted({min(i, n - 1) for i in range(k)}))
    start, end = 1, n - 3
    return tuple(sorted({round(start + i * (end - start) / (k - 1)) for i in range(k)}))


@dataclass
class HeadConfig:
    kind: str  # "causal" | "dflash" | "eagle"
    hidden_size: int  # H, the target's hidden size
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int  # head decoder layers
    target_layers: tuple[int, ...]  # which target hidden states are fused (layer l = output of layer l)
    block_size: int = 16  # B: anchor + B - 1 predicted depths (eagle: teacher-forced steps in training)
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    target_name: str = ""  # TargetInfo.name of the target it was trained on
    target_fingerprint: str = ""  # TargetInfo.fingerprint of that target
    vocab_size: int = 0  # the target's vocabulary size
    extra: dict = field(default_factory=dict)  # free-form training record (steps, data, ...)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}")
        self._check_sizes()
        self.target_layers = tuple(self.target_layers)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if not self.target_layers or self.num_layers < 1 or self.block_size < 2:
            raise ValueError("a head needs >= 1 target layer, >= 1 head layer and block_size >= 2")

    def _check_sizes(self) -> None:
        """Integers within SIZE_LIMITS and a parameter count within MAX_PARAMETERS (a head.json
        is user input: `block_size = 100000` or `num_kv_heads = 0` is an error, not an allocation)."""
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {value!r}")
        layers = self.target_layers
        if not isinstance(layers, (list, tuple)) or not all(type(t) is int and 0 <= t < 4096 for t in layers) or len(layers) > 64:
            raise ValueError(f"target_layers must be a list of at most 64 layer indices in [0, 4096), got {layers!r}")
        if type(self.vocab_size) is not int or not 0 <= self.vocab_size <= 1 << 22:
            raise ValueError(f"vocab_size must be an integer in [0, {1 << 22}], got {self.vocab_size!r}")
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = h * (2 * q + 2 * kv) + 3 * h * self.intermediate_size
        params = self.num_layers * per_layer + len(layers) * h * h + (self.block_size + 2) * h
        if params > MAX_PARAMETERS:
            raise ValueError(f"these sizes make a head of {params / 1e9:.1f}B parameters; at most {MAX_PARAMETERS / 1e9:.0f}B")

    @property
    def causal(self) -> bool:
        return self.kind != "dflash"

    @property
    def uses_mask_slots(self) -> bool:
        return self.kind != "eagle"

    @staticmethod
    def for_target(
        kind: str,
        hidden_size: int,
        num_kv_heads: int,
        head_dim: int,
        num_target_layers: int,
        layers: int = 1,
        target_layers: tuple[int, ...] | None = None,
        block_size: int = 16,
        intermediate_size: int | None = None,
        **identity,
    ) -> "HeadConfig":
        """Head geometry derived from the target: same hidden size, head dim and KV heads,
        intermediate = 8/3 H rounded up to a multiple of 64 (Llama's ratio) unless given."""
        return HeadConfig(
            kind=kind,
            hidden_size=hidden_size,
            num_heads=max(num_kv_heads, hidden_size // head_dim // num_kv_heads * num_kv_heads),
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate_size or 64 * math.ceil(hidden_size * 8 / 3 / 64),
            num_layers=layers,
            target_layers=tuple(target_layers) if target_layers else spaced_layers(num_target_layers, layers),
            block_size=block_size,
            **identity,
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["target_layers"] = list(self.target_layers)
        return d


class DraftHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        c = self.config = config
        self.fuse = nn.Linear(len(c.target_layers) * c.hidden_size, c.hidden_size, bias=False)
        self.fuse_norm = RMSNorm(c.hidden_size, c.rms_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(c.hidden_size))  # the learned MASK token
        self.layers = nn.ModuleList(
            DecoderLayer(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.rms_eps)
            for _ in range(c.num_layers)
        )
        self.norm = RMSNorm(c.hidden_size, c.rms_eps)
        self.frequencies: torch.Tensor | None = None  # [D/2] float32 RoPE frequencies, once frozen (`freeze`)
        self.reset_parameters()

    @property
    def frozen(self) -> bool:
        return self.frequencies is not None

    def freeze(self) -> "DraftHead":
        """The head as the drafters run it: no gradients, eval mode, each layer's q/k/v and gate/up
        projections stacked into one matrix (their weights become views of it: `layers.stack_weights`),
        the RoPE frequencies computed once; `forward` and `context_kv` then take the layers' fused
        path. Call it after the last `.to()`, which would part the views. Idempotent: a frozen head
        allocates nothing anew (CUDA graphs of the drafters that share it read its memory)."""
        self.requires_grad_(False).eval()
        for layer in self.layers:
            layer.attn.fuse()
            layer.mlp.fuse()
        c, device = self.config, self.fuse.weight.device
        if self.frequencies is None or self.frequencies.device != device:
            self.frequencies = rope_frequencies(c.head_dim, c.rope_theta, reciprocal=False, device=device)
        return self

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.mask_embedding, std=0.02)

    def fuse_context(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., k, H] target hidden states of the chosen layers -> fused [..., H]."""
        return self.fuse_norm(self.fuse(hidden.flatten(-2).to(self.fuse.weight.dtype)))

    def context_kv(self, fused: torch.Tensor, pos: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """fused [Bt, C, H] at positions pos [Bt, C] -> per head layer (k, v) [Bt, C, Hkv, D]."""
        cos, sin = self.rotary(pos)
        if self.frozen:
            return [layer.attn.fused_kv(fused, cos, sin) for layer in self.layers]
        return [layer.attn.kv(fused, cos, sin) for layer in self.layers]

    def forward(
        self,
        x: torch.Tensor,  # [Bt, M, H] block input embeddings (anchor / MASK / drafted tokens)
        pos: torch.Tensor,  # [Bt, M] int64 RoPE positions
        context: list[tuple[torch.Tensor, torch.Tensor]],  # per layer k, v [Bt, C, Hkv, D]
        mask: torch.Tensor,  # [Bt, M, C + M] bool
    ) -> torch.Tensor:
        """-> [Bt, M, H] final-normed hidden states, ready for the target's LM head."""
        cos, sin = self.rotary(pos)
        h = x.to(self.fuse.weight.dtype)
        if self.frozen:
            c = self.config
            bias = folded_bias(mask, c.num_heads // c.num_kv_heads, h.dtype)  # [Bt, 1, G*M, C + M], one for all layers
            for layer, prefix in zip(self.layers, context):
                h = layer.fused_forward(h, cos, sin, prefix, bias)
        else:
            for layer, prefix in zip(self.layers, context):
                h = layer(h, cos, sin, prefix, mask)
        return self.norm(h)

    def rotary(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos [...] int64 -> cos, sin [..., D] float32, with the frequencies the heads were trained
        with (theta^(-2i/D) computed directly, on pos's device: `core.layer_math`)."""
        c = self.config
        frequencies = self.frequencies if self.frozen else rope_frequencies(c.head_dim, c.rope_theta, reciprocal=False, device=pos.device)
        return rope_cos_sin(pos, frequencies)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
