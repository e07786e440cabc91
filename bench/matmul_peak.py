"""This machine's matmul peak (GFLOP/s) per dtype: the ceiling for the inference benchmark.

python bench/matmul_peak.py
"""

from __future__ import annotations

import time


def peak_gflops(dtype_name: str, n: int = 1024, seconds: float = 2.0, device: str = "cpu") -> float:
    """Best GFLOP/s of n x n x n matmuls over about `seconds`."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


if __name__ == "__main__":
    for name in ("float32", "bfloat16", "float16"):
        print(f"{name:9s} {peak_gflops(name, seconds=1.0):8.1f} GFLOP/s")
