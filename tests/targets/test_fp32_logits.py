"""The decoder's logits are float32 values of the fp32-accumulated product, never bf16-rounded:
bf16 logits tie exactly far too often (8 significant bits) for greedy decoding to be stable."""

import pytest
import torch

from jetspec.targets.decoder.model import fp32_logits


def _case(dtype, device):
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(5, 64, generator=g) * 3).to(dtype).to(device)  # [N, H]
    w = torch.randn(1000, 64, generator=g).to(dtype).to(device)  # [V, H]
    return h, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_are_float32_products_on_the_cpu(dtype):
    h, w = _case(dtype, "cpu")
    out = fp32_logits(h, w)
    assert out.dtype == torch.float32 and out.shape == (5, 1000)
    torch.testing.assert_close(out, (h @ w.t()).float(), atol=0.5 if dtype == torch.bfloat16 else 1e-4, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: the bf16 -> fp32 GEMM path is CUDA's; no GPU here")
def test_bf16_logits_on_cuda_keep_the_fp32_accumulator():
    h, w = _case(torch.bfloat16, "cuda")
    out = fp32_logits(h, w)
    exact = h.double() @ w.double().t()  # [N, V]
    assert out.dtype == torch.float32
    assert (out.double() - exact).abs().max() < 1e-3  # fp32 accumulation of exact bf16 products
    rounded = out.to(torch.bfloat16).float()
    assert (out != rounded).float().mean() > 0.9  # not bf16 values: the rounding to bf16 never happened
