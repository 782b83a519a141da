"""Kernel tests run the Triton kernels compiled on a CUDA GPU, or through Triton's interpreter
on a CPU. The interpreter is chosen when each kernel is defined, so it is set before any test
module imports one."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
