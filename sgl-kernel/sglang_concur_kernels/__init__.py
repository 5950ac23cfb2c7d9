"""Triton kernels of sglang-concur (GPU), with plain-torch references used on CPU."""
