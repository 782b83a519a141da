"""The exact mode's split-K range (`split_keys`) is part of the reduction order: a model's plain
steps, trees and batches must share it, so when the options leave it open it is a function of the
model alone — its KV heads."""

import pytest
import torch

from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions, split_keys_for
from jetspec.kernels.triton_invariant_attention import BLOCK_N  # keys per block: a split is a whole number of them


@pytest.mark.parametrize("kv_heads, keys", [(1, 256), (3, 256), (4, 256), (8, 512), (32, 512)])
def test_the_default_split_follows_the_kv_heads(kv_heads, keys):
    assert split_keys_for(kv_heads) == keys
    backend = TritonAttention(TritonAttentionOptions(), invariant=True)
    k_rows = torch.zeros(16, kv_heads, 8)  # [rows, Hkv, D]
    assert backend._split_blocks(k_rows) * BLOCK_N == keys


def test_a_split_set_in_the_options_wins():
    backend = TritonAttention(TritonAttentionOptions(split_keys=128), invariant=True)
    assert backend._split_blocks(torch.zeros(16, 3, 8)) * BLOCK_N == 128
    assert backend._split_blocks(torch.zeros(16, 8, 8)) * BLOCK_N == 128


def test_a_split_must_be_a_multiple_of_the_key_block():
    with pytest.raises(ValueError, match="multiple"):
        TritonAttentionOptions(split_keys=100)
