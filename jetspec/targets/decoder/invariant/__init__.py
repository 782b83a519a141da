"""Row-invariant kernels of the decoder (`exact = true`): linear layers, RMSNorm, SiLU·mul.

Each computes a row (a token) in an order fixed by the weight shapes alone, so a token's output
does not depend on how many tokens the forward has (see `jetspec.core.invariant`). Together with
a position-invariant attention backend they make a tree verification reproduce plain decoding
bit for bit. Importing this package imports triton."""

from .linear import linear
from .rmsnorm import rmsnorm
from .swiglu import silu_mul

__all__ = ["linear", "rmsnorm", "silu_mul"]
