"""RMSNorm and RoPE live in `jetspec.core.layer_math` with two roundings, each pinned here to what
fixes it: the decoder's to Hugging Face Llama's code, the draft heads' to the math the shipped
head was trained with (written out below as it stood in `drafters/head/layers.py`). Bit for bit,
in bf16, where the two differ."""

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from jetspec.core.layer_math import apply_rope, rms_norm, rope_frequencies
from jetspec.drafters.head.checkpoint import load_head
from jetspec.drafters.head.layers import RMSNorm, rope
from jetspec.targets.decoder.config import RopeConfig
from jetspec.targets.decoder.ops import TorchOps
from jetspec.targets.decoder.rope import RotaryTable

G = torch.Generator().manual_seed(0)
X = (torch.randn(6, 4, 64, generator=G) * 3).bfloat16()  # [N, h, D]
W = (1 + 0.3 * torch.randn(64, generator=G)).bfloat16()
POS = torch.tensor([0, 1, 17, 300, 2047, 5000])
SHIPPED = "jetspec/assets/heads/SmolLM2-135M-Instruct/causal"


def test_the_decoder_rounds_as_hugging_face_llama():
    hf_norm = LlamaRMSNorm(64, eps=1e-5)
    hf_norm.weight.data = W.clone()
    assert torch.equal(TorchOps().rmsnorm(X, W, 1e-5), hf_norm(X))

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, rope_theta=500000.0, max_position_embeddings=8192)
    cos, sin = LlamaRotaryEmbedding(config)(X, POS[None])  # [1, N, D] in X's dtype
    table = RotaryTable(RopeConfig(theta=500000.0), 64, 8192, torch.bfloat16, torch.device("cpu"))
    assert torch.equal(table.cos[POS], cos[0]) and torch.equal(table.sin[POS], sin[0])
    q = X.transpose(0, 1)[None]  # [1, h, N, D] as transformers holds it
    hf_q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    ours = apply_rope(X, *table.at(POS), in_float32=False)  # [N, h, D]
    assert torch.equal(ours, hf_q[0].transpose(0, 1))


def test_the_heads_round_as_the_shipped_head_was_trained():
    head = load_head(SHIPPED).bfloat16()
    norm, c = head.norm, head.config
    h = (torch.randn(6, c.hidden_size, generator=G) * 3).bfloat16()
    hf = h.float()
    trained = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()).bfloat16()
    assert isinstance(norm, RMSNorm) and torch.equal(norm(h), trained)

    inv_freq = c.rope_theta ** (-torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim)
    angles = POS.float()[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)  # [N, D]
    cos, sin = head.rotary(POS)
    assert torch.equal(cos, angles.cos()) and torch.equal(sin, angles.sin())
    x1, x2 = X.float().chunk(2, dim=-1)
    trained_rope = (X.float() * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]).bfloat16()
    assert torch.equal(rope(X[None], cos[None], sin[None])[0], trained_rope)


def test_the_two_roundings_agree_in_float32_and_part_in_bf16():
    """Why the parameters exist: neither rounding can stand in for the other below float32."""
    for scale_in_float32 in (True, False):
        assert torch.equal(rms_norm(X.float(), W.float(), 1e-5, scale_in_float32=scale_in_float32),
                           rms_norm(X.float(), W.float(), 1e-5, scale_in_float32=not scale_in_float32))
    assert not torch.equal(rms_norm(X, W, 1e-5, scale_in_float32=True), rms_norm(X, W, 1e-5, scale_in_float32=False))
    heads, hf = rope_frequencies(64, 10000.0, reciprocal=False), rope_frequencies(64, 10000.0, reciprocal=True)
    assert not torch.equal(heads, hf) and torch.allclose(heads, hf, rtol=2**-23, atol=0)  # one ulp apart
