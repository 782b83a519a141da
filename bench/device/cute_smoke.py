"""A quick check before the long cute steps of h200.sh: every warpgroup schedule of the cute
backend runs (no hang: the caller's `timeout`) and matches the fp32 reference on two problems.
Exit status 1 on any failure. From the repository root: python -m bench.device.cute_smoke"""

from __future__ import annotations

import sys

import torch

from jetspec.kernels.cute_backend import CuteAttention, CuteAttentionOptions
from tests.kernel_tests.cases import build_problem, random_tree

failed = 0
for nodes, prefix in ((40, 100), (256, 3000)):
    g = torch.Generator().manual_seed(nodes)
    tree = random_tree([int(torch.randint(0, i, (1,), generator=g)) for i in range(1, nodes)])
    p = build_problem(tree, prefix, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16, page_size=16, commit="gather")
    expected = p.reference()
    for options in (CuteAttentionOptions(), CuteAttentionOptions(pingpong=False), CuteAttentionOptions(specialized=False),
                    CuteAttentionOptions(mma="warpgroup", num_warps=4)):
        out = CuteAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
        torch.cuda.synchronize()
        err = (out.float() - expected).abs().max().item()
        ok = err < 2e-2
        failed += not ok
        print(f"{nodes:4} nodes after {prefix:5}: {options.model_dump(exclude_defaults=True) or 'defaults'}: max abs err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
sys.exit(1 if failed else 0)
