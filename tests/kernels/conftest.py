"""Kernel tests run the Triton kernels compiled on a CUDA GPU, or through Triton's interpreter
on a CPU (set for every test in tests/conftest.py, before any module imports triton)."""
