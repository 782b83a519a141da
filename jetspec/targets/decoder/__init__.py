"""Our own compact decoder for the Llama / SmolLM, Qwen2 / Qwen2.5 and Qwen3 families.

    config.py   DecoderConfig read from a Hugging Face config.json (+ RopeConfig)
    rope.py     RoPE frequencies (default, linear, llama3, yarn) and the cos/sin table
    layers.py   RMSNorm, GQA attention through an AttentionBackend, SwiGLU MLP, DecoderLayer
    ops.py      the layers' steps: TorchOps, or InvariantOps (`exact = true`: invariant/'s fused,
                row-invariant Triton kernels, five launches per layer besides attention)
    graphs.py   CUDA graphs of the forward, one per query-count bucket
    parallel.py tensor parallelism: each rank's slices, one all-reduce after o_proj and down_proj
    model.py    DecoderModel (weights) and DecoderTarget (the Target protocol)
    loading.py  DecoderTargetOptions and load_decoder_target (safetensors + tokenizer)
"""

from .config import DecoderConfig, RopeConfig
from .loading import DecoderTargetOptions, load_decoder_target
from .model import DecoderModel, DecoderTarget

__all__ = [
    "DecoderConfig",
    "DecoderModel",
    "DecoderTarget",
    "DecoderTargetOptions",
    "RopeConfig",
    "load_decoder_target",
]
