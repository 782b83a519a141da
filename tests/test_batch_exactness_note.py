"""Where a batch is not known to give every prompt its batch-1 output bit for bit, the user is told
in one line before it runs; where it is — an exact target (`exact = true`: row- and
position-invariant kernels, every row's bits its own sequence's), float32 on the CPU, batch size 1 —
nothing is said."""

import torch

from jetspec.core.batch import batch_exactness_note
from jetspec.core.records import TargetInfo


def info(device: str, dtype: torch.dtype, exact: bool = False) -> TargetInfo:
    return TargetInfo(name="t", architecture="llama", vocab_size=10, num_layers=1, hidden_size=8, num_kv_heads=1, head_dim=8,
                      max_positions=64, dtype=dtype, device=torch.device(device), eos_token_ids=(0,), exact=exact)


def test_a_free_order_bf16_gpu_batch_is_told_and_an_exact_or_cpu_fp32_batch_or_batch_one_is_not():
    note = batch_exactness_note(info("cuda", torch.bfloat16), 8)
    assert note is not None and "\n" not in note and "batch_size 8" in note and "bfloat16" in note and "cuda" in note
    assert "exact = true" in note  # what to set instead
    assert batch_exactness_note(info("cuda", torch.float32), 8) is not None  # not tested bit-exact there
    assert batch_exactness_note(info("cuda", torch.bfloat16, exact=True), 8) is None  # the default on CUDA
    assert batch_exactness_note(info("cpu", torch.bfloat16, exact=True), 8) is None
    assert batch_exactness_note(info("cpu", torch.float32), 8) is None
    assert batch_exactness_note(info("cuda", torch.bfloat16), 1) is None
