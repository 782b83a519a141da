"""Loading a Hugging Face folder (config.json + *.safetensors + tokenizer) into a `DecoderTarget`.

Every way a folder can be unusable — missing, no config, unsupported architecture, corrupt or
truncated safetensors, missing or misshapen tensors, a tokenizer larger than the embedding — is a
one-line `CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open

from ...core.errors import CheckpointError, ConfigError, IncompatibleError
from ...core.fingerprint import fingerprint_tensors, target_fingerprint
from ...core.interfaces import AttentionBackend, PositionInvariantAttention, TargetInfo
from .config import DecoderConfig
from .model import DecoderModel, DecoderTarget

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class DecoderTargetOptions(BaseModel):
    """Options of the `decoder` target loader."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None  # a Hugging Face model folder; None = the embedded SmolLM2-135M-Instruct
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    cuda_graphs: bool = True  # replay captured forwards on CUDA (needs a graph-safe attention backend)
    # bit-exact verification (row- and position-invariant kernels): None = on CUDA whenever the
    # attention backend has a position-invariant mode; true demands it; false = torch's kernels
    exact: bool | None = None
    linear_chunk: int | None = Field(None, ge=64, le=65536, multiple_of=64, description=(
        "exact = true: each projection sums a row's K products in chunks of this many, P_0 + P_1 + ... in that order "
        "(split-K in a fixed order: part of the reduction order, free per model; a plain step's chunks run as programs "
        "of their own); None: one chunk, k from 0 up"))
    tensor_parallel: int = Field(1, ge=1, description=(
        "ranks the model is split over (torchrun --nproc-per-node N, N = this); it must divide the KV heads and the "
        "intermediate size. 1: the whole model in this process"))


def load_decoder_target(options: DecoderTargetOptions, attention: AttentionBackend) -> DecoderTarget:
    if options.path is None:
        from ..default_model import default_model_path  # converts the embedded GGUF on first use

        folder = default_model_path()
    else:
        folder = Path(options.path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"model path {folder} does not exist or is not a folder")
    cfg = DecoderConfig.from_folder(folder)
    ranks, shard = _ranks(cfg, options.tensor_parallel)
    device = _device(options.device) if ranks is None else _rank_device(options.device, ranks)
    if options.dtype == "auto":  # as the transformers target does: fast on GPUs, exact on CPUs
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = DTYPES[options.dtype]

    whole: dict[str, torch.Tensor] = {}  # the tensors fingerprinted, before any sharding
    fingerprinted = ("embed_tokens.weight", f"layers.{cfg.num_layers - 1}.mlp.down_proj.weight")

    def keep(name: str, t) -> torch.Tensor:  # t: a safetensors slice (nothing read yet)
        if name in fingerprinted:
            whole[name] = t = t[:]
        return shard(name, t)

    with torch.device("meta"):  # no random init: every parameter is assigned from the checkpoint
        model = DecoderModel(cfg if ranks is None else _local(cfg, options.tensor_parallel))
    tensors = read_weights(folder, model, dtype, device, None if shard is None else keep)
    model.load_state_dict(tensors, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters())

    exact = resolve_exact(options.exact, attention, device)
    if exact:
        attention = attention.position_invariant()
    tokenizer = load_tokenizer(folder, cfg.vocab_size)
    eos = cfg.eos_token_ids
    if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos = eos + (int(tokenizer.eos_token_id),)
    info = TargetInfo(
        name=model_name(folder),
        architecture=cfg.architecture,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_positions=cfg.max_positions,
        dtype=dtype,
        device=device,
        eos_token_ids=eos,
        fingerprint=target_fingerprint(  # the same identity the transformers target reports
            cfg.architecture, cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim,
            fingerprint_tensors(model) if ranks is None else [whole[n] for n in fingerprinted if n in whole],
        ),
        exact=exact,
        tensor_parallel=options.tensor_parallel,
    )
    return DecoderTarget(model, attention, info, tokenizer, cuda_graphs=options.cuda_graphs, ranks=ranks,
                         linear_chunk=options.linear_chunk)


def _ranks(cfg: DecoderConfig, degree: int):
    """(Ranks, shard(name, tensor)) for tensor_parallel = degree > 1, checked against the model
    and the live process group; (None, None) for one process."""
    if degree == 1:
        return None, None
    from ...core.distributed import current
    from .parallel import check_degree, shard

    ranks = current()
    check_degree(cfg, degree, 1 if ranks is None else ranks.world)
    return ranks, lambda name, t: shard(name, t, ranks.rank, degree)


def _local(cfg: DecoderConfig, degree: int) -> DecoderConfig:
    from .parallel import local_config

    return local_config(cfg, degree)


def _rank_device(name: str, ranks) -> torch.device:
    """A tensor-parallel rank's device: the group's (cuda:LOCAL_RANK under NCCL, cpu under gloo)."""
    if name not in ("auto", ranks.device.type):
        raise ConfigError(f"device {name!r} with tensor_parallel: the process group runs on {ranks.device.type} "
                          f"({'NCCL' if ranks.device.type == 'cuda' else 'gloo'}); use device 'auto'")
    return ranks.device


def resolve_exact(exact: bool | None, attention: AttentionBackend, device: torch.device) -> bool:
    """The `exact` option against what the attention backend and the device can do."""
    import os
    import sys

    capable = isinstance(attention, PositionInvariantAttention)
    kernels_run = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    name = getattr(attention, "backend_name", type(attention).__name__)
    if exact is None:
        if device.type == "cuda" and not capable:
            print(f"jetspec: attention {name!r} has no position-invariant mode: speculative output may differ from "
                  "plain decoding at near-ties (exact = false); attention 'triton' and 'cute' are exact", file=sys.stderr)
        return device.type == "cuda" and capable
    if exact and not capable:
        raise IncompatibleError(f"exact = true needs an attention backend with a position-invariant mode (triton, cute); "
                                f"{name!r} has none: choose attention 'triton' or set exact = false")
    if exact and not kernels_run:
        raise IncompatibleError("exact = true runs Triton kernels: it needs a CUDA GPU (or TRITON_INTERPRET=1 on a CPU)")
    return exact


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available; use 'cpu' or 'auto'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def safetensors_files(folder: Path) -> dict[str, list[str] | None]:
    """file path -> the checkpoint keys it holds per the shard index (None: read them all)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read {index}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        files: dict[str, list[str] | None] = {}
        for key, name in weight_map.items():
            files.setdefault(str(folder / name), []).append(key)
        for f in files:
            if not Path(f).is_file():
                raise CheckpointError(f"shard {Path(f).name} named in {index.name} is missing from {folder}")
        return files
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"no *.safetensors weights in {folder}")
    return {str(f): None for f in found}


def read_weights(
    folder: Path, model: DecoderModel, dtype: torch.dtype, device: torch.device,
    transform: Callable[[str, Any], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """-> state dict of `model` in `dtype` on `device`. `transform(name, lazy)`, where given, reads
    each checkpoint tensor from its safetensors slice `lazy` (a tensor-parallel rank reads only
    its rows or columns: `parallel.shard`)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ignorable = {"lm_head.weight"} if model.cfg.tie_embeddings else set()  # tied: some checkpoints store a copy
    expected = {k: v for k, v in expected.items() if k not in ignorable}
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path, keys in safetensors_files(folder).items():
        try:
            f = safe_open(path, framework="pt", device="cpu")
        except Exception as e:  # safetensors reports corruption as its own error type
            raise corrupt(path, e) from None
        with f:
            for key in keys if keys is not None else f.keys():
                name = key.removeprefix("model.")
                if name in ignorable or name.endswith("rotary_emb.inv_freq"):
                    continue
                if name not in expected:  # e.g. biases the config does not declare
                    unexpected.append(key)
                    continue
                try:
                    t = f.get_tensor(key) if transform is None else transform(name, f.get_slice(key))
                except Exception as e:
                    raise corrupt(path, e) from None
                if t.shape != expected[name]:
                    raise CheckpointError(
                        f"tensor {key} in {Path(path).name} has shape {tuple(t.shape)}, "
                        f"the config implies {tuple(expected[name])}"
                    )
                out[name] = t.to(device=device, dtype=dtype)
    missing = [k for k in expected if k not in out]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"checkpoint {folder} lacks tensors {', '.join(missing[:3])}{more}")
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise CheckpointError(
            f"checkpoint {folder} has tensors its {model.cfg.architecture} config does not explain: "
            f"{', '.join(unexpected[:3])}{more}"
        )
    return out


def corrupt(path: str, e: Exception) -> CheckpointError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return CheckpointError(f"cannot read weights {path} (corrupt or truncated?): {reason}")


def load_tokenizer(folder: Path, vocab_size: int) -> Any | None:
    """The folder's tokenizer (local files only), or None when it ships none."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {reason}") from None
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"tokenizer in {folder} has {len(tokenizer)} tokens but the model's embedding has only {vocab_size} rows"
        )
    return tokenizer


# ---------------------------------------------------------------------------- identity
def model_name(folder: Path) -> str:
    """The folder name; for a hub-cache snapshot (models--org--name/snapshots/<hash>), org/name."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    return folder.name
