"""`transformers` target: any Hugging Face causal LM, verified through its own forward.

A fallback for architectures our decoder does not cover (and the reference our decoder is
tested against). Each forward rebuilds a `DynamicCache` from our KV cache's committed entries,
runs the N tree tokens with a 4-D boolean tree mask [1, 1, N, T + N] and tree position ids, then
copies the N new keys/values back as pending entries of our cache. The copy makes every round
O(T) in memory traffic: correct and simple, not fast. Attention goes through `transformers`,
so this target cannot use our attention backends (it does not provide `attention_backend`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from ..core.errors import CheckpointError
from ..core.fingerprint import fingerprint_tensors, target_fingerprint
from ..core.interfaces import AttentionMeta, KVCache, TargetInfo, TargetOutput
from ..core.tree import tree_mask

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersTargetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


class TransformersTarget:
    provides = ("hidden_states",)

    def __init__(self, model: Any, tokenizer: Any | None = None, name: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else []
        eos = (eos,) if isinstance(eos, int) else tuple(eos)
        param = next(model.parameters())
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.info = TargetInfo(
            name=name or getattr(cfg, "_name_or_path", "") or cfg.model_type,
            architecture=cfg.model_type,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_positions=getattr(cfg, "max_position_embeddings", 1 << 20),
            dtype=param.dtype,
            device=param.device,
            eos_token_ids=eos,
            # independent of the load dtype: a head trained on a bf16 GPU load fits a fp32 CPU load
            fingerprint=target_fingerprint(
                cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, kv_heads, head_dim,
                fingerprint_tensors(model),
            ),
        )
        # transformers >= 5.2x renamed `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # the draft heads share the target's embedding and LM head
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(tokens)  # [n] -> [n, H]

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)  # [n, H] -> [n, V]

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: Sequence[int] = ()
    ) -> TargetOutput:
        from transformers import DynamicCache

        t = meta.prefix_len
        device = self.info.device
        past = DynamicCache(config=self.model.config)
        if t > 0:
            for layer in range(self.info.num_layers):
                k, v = cache.read(layer)  # [T + n, Hkv, D]
                past.update(k[:t].transpose(0, 1)[None], v[:t].transpose(0, 1)[None], layer)
        mask = tree_mask(meta.subtree_sizes.to(device), t)  # [N, T + N]
        out = self.model(
            input_ids=tokens.to(device)[None],
            attention_mask=mask[None, None],
            position_ids=meta.positions.to(device)[None],
            use_cache=True,
            output_hidden_states=bool(hidden_layers),
            **{self._cache_kw: past},
        )
        for layer in range(self.info.num_layers):
            lay = past.layers[layer]
            cache.write(layer, lay.keys[0, :, t:].transpose(0, 1), lay.values[0, :, t:].transpose(0, 1))
        hidden = None
        if hidden_layers:
            hidden = torch.stack([out.hidden_states[l + 1][0] for l in hidden_layers], dim=1)  # [N, k, H]
        return TargetOutput(logits=out.logits[0].float(), hidden=hidden)


def load_transformers_target(options: TransformersTargetOptions, attention: Any = None) -> TransformersTarget:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(options.path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"no Hugging Face model at '{path}': expected a folder with config.json and *.safetensors")
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
    except Exception as e:  # transformers raises many types; the user needs one line
        raise CheckpointError(f"cannot load model from '{path}': {str(e).splitlines()[0]}") from None
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        tokenizer = None  # token-id prompts still work
    return TransformersTarget(model, tokenizer, name=path.name)
