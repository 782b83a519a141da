"""Does the invariant linear kernel keep a row's bits when its row tile changes (BLOCK_M 16/32
use mma.sync, 64/128 Hopper's wgmma) and with 4 or 8 warps? Prints one line per variant: the
rows whose output differs from the BLOCK_M = 16, 4-warp launch of the same rows. The gate/up
shape (N 24576) runs in the swiglu form (two accumulators) as the decoder runs it. Exit status 1
when any row differs (the exact decoder's claim would not hold on this GPU).

    python -m bench.device.invariance_probe
"""

import sys

import torch
import triton

from jetspec.core.invariant import LAUNCH
from importlib import import_module

lin = import_module("jetspec.targets.decoder.invariant.linear")


def run(x, w, out_dtype, block_m, warps):
    m, k = x.shape
    swiglu = w.shape[0] == 24576
    n = w.shape[0] // 2 if swiglu else w.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    _, bk = lin.tiles(n, k)
    bn = 32 if block_m <= 64 else 64 if swiglu else 128
    lin._linear_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, bn))](
        x, w, w, y, y, m, n, k, x.stride(0), w.stride(0), 0, y.stride(0), HAS_BIAS=False, RESIDUAL=False,
        SWIGLU=swiglu, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk, BY_SUM=False, num_warps=warps, num_stages=3, **LAUNCH)
    return y


torch.manual_seed(0)
differing = 0
for k, n, out in ((4096, 6144, torch.bfloat16), (4096, 4096, torch.bfloat16), (12288, 4096, torch.bfloat16),
                  (4096, 24576, torch.bfloat16), (4096, 32768, torch.float32), (576, 1536, torch.bfloat16)):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(256, k, device="cuda", dtype=torch.bfloat16)
    ref = run(x, w, out, 16, 4)
    one = torch.stack([run(x[i:i + 1], w, out, 16, 4)[0] for i in range(0, 256, 37)])
    same = torch.equal(one, ref[0:256:37])
    differing += not same
    print(f"K{k} N{n} {out}: rows of M=1 launches == M=256 launch: {same}")
    for bm, warps in ((32, 4), (64, 4), (128, 4), (64, 8), (128, 8), (16, 8)):
        for m in (1, 64, 256):
            y = run(x[:m].contiguous(), w, out, bm, warps)
            bad = (y != ref[:m]).any(dim=1).sum().item()
            differing += bad
            print(f"  BLOCK_M {bm:>3} warps {warps} M {m:>3}: {bad} of {m} rows differ")
sys.exit(1 if differing else 0)
