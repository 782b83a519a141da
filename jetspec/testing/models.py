"""Tiny random-weight targets: enough to test losslessness, fast on a CPU.

* `tiny_target(family, seed)`: a `transformers` Llama/Qwen model behind our `transformers`
  adapter. Its attention runs inside `transformers`; K/V go through our `KVCache`.
* `TinyDecoder(seed, attention)`: the smallest target whose attention goes through an
  `AttentionBackend` (pre-norm, RoPE, GQA, 2 layers) — the one that exercises a backend.
  `TinyDecoder(seed, vocab=..., exact=True)`: the same model with any vocabulary, whose logits at a
  tree node equal those of a one-token step at the same prefix bit for bit (`_forward_exact`):
  the kit's target for seeded sampling, where a flipped low bit could change a draw (in batches
  too: `forward_batch` takes each sequence's rows through `_forward_exact`).

Both use a large weight init: logit gaps of order 1, so fp32 reduction-order noise (a tree forward
versus a chain forward, one kernel versus another) never flips an argmax.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch

from ..core.interfaces import AttentionBackend, AttentionMeta, KVCache, TargetInfo, TargetOutput
from ..core.layer_math import apply_rope, rms_norm, rope_cos_sin, rope_frequencies

FAMILIES = ("llama", "qwen3")
EOS = 3  # every tiny model's EOS token: random weights emit it now and then
VOCAB = 96
GRID = 2.0**-6  # an exact TinyDecoder's fixed-point step for its LM head's inputs and weights


def fixed_point(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x clamped to [-bound, bound) and rounded to a multiple of GRID (every step exact in fp32)."""
    return x.clamp(-bound, bound - GRID).mul(1 / GRID).round().mul(GRID)


def tiny_hf_model(family: str = "llama", seed: int = 0, vocab: int = VOCAB, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=EOS,
        bos_token_id=1,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden // 4, **common))
    else:
        raise ValueError(f"unknown tiny model family '{family}'; known: llama, qwen2, qwen3 (the kit's target 'decoder' "
                         "is tiny_decoder(seed); any_tiny_target(name, seed) takes every name the kit's targets= takes)")
    return model.float().eval()


@functools.lru_cache(maxsize=16)
def tiny_target(family: str = "llama", seed: int = 0):
    """A `transformers` target over a tiny random model (cached: tests reuse models)."""
    from ..targets.transformers_adapter import TransformersTarget

    return TransformersTarget(tiny_hf_model(family, seed), tokenizer=None, name=f"tiny-{family}-{seed}")


class TinyDecoder:
    """x = embed(t); per layer: x += Wo·attend(rope(Wq·n(x)), cache) ; x += W2·silu(W1·n(x));
    logits = Wout·n(x), with n(x) = x / rms(x). K/V are written to the cache after RoPE, so any
    `KVCache` / `AttentionBackend` pair can serve it. Hidden sizes: H=32, Hq=4, Hkv=2, D=16 (the smallest the Triton kernel takes), L=2."""

    provides = ("hidden_states", "attention_backend")
    tokenizer = None

    def __init__(self, seed: int = 0, attention: AttentionBackend | None = None, device: str | torch.device = "cpu",
                 vocab: int = VOCAB, exact: bool = False):  # fmt: skip
        from ..kernels.reference import TorchAttention

        if exact and attention is not None:
            raise ValueError("an exact TinyDecoder attends row by row with the reference math; it takes no attention backend")
        self.attention = attention or TorchAttention()
        H, self.hq, self.hkv, self.d, L = 32, 4, 2, 16, 2
        device = torch.device(device)
        name = f"tiny-decoder-{seed}" + (f"-v{vocab}" if vocab != VOCAB else "") + ("-exact" if exact else "")
        self.info = TargetInfo(
            name=name, architecture="tiny", vocab_size=vocab, hidden_size=H, num_layers=L,
            num_kv_heads=self.hkv, head_dim=self.d, max_positions=2048, dtype=torch.float32, device=device,
            eos_token_ids=(EOS,), fingerprint=name, exact=exact,
        )
        g = torch.Generator().manual_seed(seed)

        def w(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * scale / math.sqrt(shape[-1])).to(device)

        self.embedding = w(vocab, H, scale=math.sqrt(H))  # [V, H]
        self.layers = [
            dict(q=w(self.hq * self.d, H), k=w(self.hkv * self.d, H), v=w(self.hkv * self.d, H),
                 o=w(H, self.hq * self.d), up=w(64, H), down=w(H, 64))
            for _ in range(L)
        ]
        self.out = w(vocab, H, scale=4.0)  # [V, H]; scale 4: logit gaps of order 1
        if exact:  # see `_forward_exact`
            self.out = fixed_point(self.out, 2.0)
        self._inv_freq = rope_frequencies(self.d, 10000.0, reciprocal=True, device=device)  # [D/2]

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [N, h, D] at positions [N] -> RoPE (theta 10000), in float32."""
        cos, sin = rope_cos_sin(positions.to(x.device), self._inv_freq)  # [N, D]
        return apply_rope(x, cos[:, None], sin[:, None], in_float32=False)

    @staticmethod
    def _norm(x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, None, 1e-6, scale_in_float32=False)  # fp32 in, fp32 out: both roundings agree

    # what draft heads share with their target (as the decoder and transformers targets offer)
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding[tokens.to(self.info.device)]  # [n] -> [n, H]

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.out.T  # [n, H] (already normed) -> [n, V]

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: Sequence[int] = ()
    ) -> TargetOutput:
        if self.info.exact:
            return self._forward_exact(tokens, meta, cache, hidden_layers)
        return self._forward(tokens, meta, cache, hidden_layers, self.attention)

    def batch_problem(self) -> str | None:
        """`BatchedTarget`: None for the exact model (it works row by row anyway), else the backend's."""
        from ..core.batch import batch_attention_problem

        return None if self.info.exact else batch_attention_problem(self.attention)

    @torch.no_grad()
    def forward_batch(self, tokens: torch.Tensor, meta: Any, caches: Sequence[KVCache],
                      hidden_layers: Sequence[int] = ()) -> TargetOutput:
        """`BatchedTarget`: the packed rows of several sequences (`core.batch.BatchMeta`) in one forward;
        the exact model's rows each sequence's `_forward_exact` in turn (row by row: the same bits)."""
        from ..core.batch import PackedAttention, PackedKV

        if self.info.exact:
            outs = [self._forward_exact(tokens[meta.rows(s)], m, c, hidden_layers)
                    for s, (m, c) in enumerate(zip(meta.seqs, caches))]
            hidden = torch.cat([o.hidden for o in outs]) if hidden_layers else None  # [R, k, H]
            return TargetOutput(logits=torch.cat([o.logits for o in outs]), hidden=hidden)  # [R, V]
        return self._forward(tokens, meta, PackedKV(caches, meta), hidden_layers, PackedAttention(self.attention))

    def _forward(self, tokens: torch.Tensor, meta: Any, cache: Any, hidden_layers: Sequence[int], attention: Any) -> TargetOutput:
        n = tokens.numel()
        x = self.embedding[tokens.to(self.info.device)]  # [N, H]
        hidden = []
        for layer, p in enumerate(self.layers):
            h = self._norm(x)
            q = self._rope((h @ p["q"].T).view(n, self.hq, self.d), meta.positions)  # [N, Hq, D]
            k = self._rope((h @ p["k"].T).view(n, self.hkv, self.d), meta.positions)  # [N, Hkv, D]
            v = (h @ p["v"].T).view(n, self.hkv, self.d)  # [N, Hkv, D]
            cache.write(layer, k, v)
            a = attention.attend(q, cache, layer, meta, 1.0 / math.sqrt(self.d))  # [N, Hq, D]
            x = x + a.reshape(n, -1) @ p["o"].T
            x = x + torch.nn.functional.silu(self._norm(x) @ p["up"].T) @ p["down"].T
            hidden.append(x)
        logits = self._norm(x) @ self.out.T  # [N, V]
        stacked = torch.stack([hidden[l] for l in hidden_layers], dim=1) if hidden_layers else None  # [N, k, H]
        return TargetOutput(logits=logits.float(), hidden=stacked)


    def _forward_exact(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: Sequence[int]) -> TargetOutput:
        """Row-invariant: each row's layers run on that row alone (shapes [1, ...]: the calls of a
        one-token step) and attend to exactly its visible keys, gathered in order (the committed
        prefix, then its ancestors-or-self), so its hidden states are a one-token step's at the
        same prefix, bit for bit. The LM head then takes all rows at once in fixed point: inputs
        in [-8, 8) and weights in [-2, 2) on a 2^-6 grid make every product a multiple of 2^-12
        and every partial sum of H = 32 of them smaller than 2^9 (21 significant bits), exact in
        fp32 in any summation order, so no matmul kernel can change a bit of the logits."""
        from ..kernels.reference import tree_attention

        n, t, dev = tokens.numel(), meta.prefix_len, self.info.device
        sizes = meta.subtree_sizes.tolist()
        visible = [  # [t + depth_i + 1] key rows of query i: j <= i < j + size[j] are its ancestors-or-self
            torch.tensor([*range(t), *(t + j for j in range(i + 1) if i < j + sizes[j])], device=dev) for i in range(n)
        ]
        rows = [self.embedding[tokens[i : i + 1].to(dev)] for i in range(n)]  # n x [1, H]
        scale, hidden = 1.0 / math.sqrt(self.d), []
        for layer, p in enumerate(self.layers):
            qs, ks, vs = [], [], []
            for i, x in enumerate(rows):
                h, pos = self._norm(x), meta.positions[i : i + 1]
                qs.append(self._rope((h @ p["q"].T).view(1, self.hq, self.d), pos))  # [1, Hq, D]
                ks.append(self._rope((h @ p["k"].T).view(1, self.hkv, self.d), pos))  # [1, Hkv, D]
                vs.append((h @ p["v"].T).view(1, self.hkv, self.d))
            cache.write(layer, torch.cat(ks), torch.cat(vs))
            keys, values = cache.read(layer)  # [t + n, Hkv, D]
            for i, x in enumerate(rows):
                seen = visible[i].numel()
                a = tree_attention(qs[i], keys[visible[i]], values[visible[i]], AttentionMeta.for_chain(1, seen - 1, dev), scale)
                x = x + a.reshape(1, -1) @ p["o"].T
                rows[i] = x + torch.nn.functional.silu(self._norm(x) @ p["up"].T) @ p["down"].T
            hidden.append(torch.cat(rows))  # [N, H]
        logits = fixed_point(torch.cat([self._norm(x) for x in rows]), 8.0) @ self.out.T  # [N, V]
        stacked = torch.stack([hidden[l] for l in hidden_layers], dim=1) if hidden_layers else None  # [N, k, H]
        return TargetOutput(logits=logits, hidden=stacked)


@functools.lru_cache(maxsize=8)
def tiny_decoder(seed: int = 0) -> TinyDecoder:
    """A `TinyDecoder` with the reference attention (cached)."""
    return TinyDecoder(seed)


def any_tiny_target(kind: str, seed: int) -> Any:
    """"decoder" -> `tiny_decoder(seed)`; a transformers family name -> `tiny_target(kind, seed)`."""
    return tiny_decoder(seed) if kind == "decoder" else tiny_target(kind, seed)


@functools.lru_cache(maxsize=8)
def tiny_decoder_target(family: str = "llama", seed: int = 0, attention: str = "torch", device: str = "cpu"):
    """Our `decoder` target (`targets/decoder`) over `tiny_hf_model(family, seed)`'s weights, fp32
    on `device` (the CPU unless a GPU test names "cuda"), attention 'torch', no CUDA graphs (cached;
    the checkpoint is written once to a temporary folder)."""
    import tempfile

    from ..kernels.reference import TorchAttention
    from ..targets.decoder import DecoderTargetOptions, load_decoder_target

    if attention != "torch":
        raise ValueError(f"tiny_decoder_target takes attention 'torch' only, got {attention!r}")
    folder = tempfile.mkdtemp(prefix=f"jetspec-tiny-{family}-{seed}-")
    tiny_hf_model(family, seed).save_pretrained(folder)
    options = DecoderTargetOptions(path=folder, device=device, dtype="float32", cuda_graphs=False)
    return load_decoder_target(options, TorchAttention())
