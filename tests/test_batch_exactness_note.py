"""A batch runs without exact mode (the invariant kernels verify one sequence at a time), so where
batched output is not known to equal batch-1 output bit for bit the user is told in one line before
it runs; where it is (float32 on the CPU, the lossless property's setting) nothing is said."""

import torch

from jetspec.core.batch import batch_exactness_note
from jetspec.core.records import TargetInfo


def info(device: str, dtype: torch.dtype) -> TargetInfo:
    return TargetInfo(name="t", architecture="llama", vocab_size=10, num_layers=1, hidden_size=8, num_kv_heads=1, head_dim=8,
                      max_positions=64, dtype=dtype, device=torch.device(device), eos_token_ids=(0,))


def test_a_bf16_gpu_batch_is_told_and_a_cpu_fp32_batch_or_batch_one_is_not():
    note = batch_exactness_note(info("cuda", torch.bfloat16), 8)
    assert note is not None and "\n" not in note and "batch_size 8" in note and "bfloat16" in note and "cuda" in note
    assert batch_exactness_note(info("cuda", torch.float32), 8) is not None  # not tested bit-exact there
    assert batch_exactness_note(info("cpu", torch.float32), 8) is None
    assert batch_exactness_note(info("cuda", torch.bfloat16), 1) is None
