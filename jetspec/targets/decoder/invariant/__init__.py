"""Row-invariant kernels of the decoder (`exact = true`); a layer launches five besides attention:

    linear.py      x W^T + b                                 q/k/v
                   and its prologue: rmsnorm(x) first        q/k/v, gate/up (input, post-attention norms)
                   its epilogues: + residual                 o_proj, down_proj
                   silu(g) * u                               gate/up
    rope_write.py  q/k norm, RoPE of q and k, the K/V write  after the q/k/v projection
    rmsnorm.py     RMSNorm: the statistic's order, shared    (the unfused form: no launch in a forward)

and one after the layers: the final norm as the prologue of the logits projection.

Each computes a row (a token) in an order fixed by the weight shapes alone, so a token's output
does not depend on how many tokens the forward has (see `jetspec.core.invariant`). Together with
a position-invariant attention backend they make a tree verification reproduce plain decoding
bit for bit. Importing this package imports triton."""

from .linear import linear, swiglu
from .rmsnorm import rmsnorm
from .rope_write import rope_write

__all__ = ["linear", "rmsnorm", "rope_write", "swiglu"]
