"""Triton kernels of our own, for what torch and fla do not fuse for us at inference.

Imported only through `hybridize.mixers.kernels` on first use (importing hybridize never imports Triton). Each
kernel module states its PyTorch reference; the tests run every kernel against it, on the CPU in Triton's
interpreter (TRITON_INTERPRET=1, set by tests/conftest.py when there is no GPU) and on the GPU (`pytest -m gpu`).
"""
