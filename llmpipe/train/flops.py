"""The peak FLOP/s that MFU is measured against: the recipe's, a known GPU's, or measured once.

Written here because no library we use measures a machine's matmul peak; the GPU table holds the
vendors' dense (no sparsity) bf16 tensor-core figures.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from llmpipe.core.files import write_json_atomic

# Dense bf16 peak FLOP/s from the vendors' data sheets, matched on the CUDA device name.
GPU_PEAKS_BF16 = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 756e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
    "RTX 6000 Ada": 364e12, "A6000": 155e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


def _cache_file() -> Path:
    root = Path(os.environ.get("LLMPIPE_CACHE") or Path.home() / ".cache" / "llmpipe")
    return root / "peak_flops.json"


def measure_matmul_peak(device: str, dtype: Any, seconds: float = 0.5) -> float:
    """Best FLOP/s of square matmuls on `device` in `dtype` over about `seconds`."""
    import torch

    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def peak_flops(args: Any, peak_tflops: float = 0.0) -> tuple[float | None, str]:
    """(peak FLOP/s per device, where it came from) for the trainer's device and precision."""
    import torch

    if peak_tflops > 0:
        return peak_tflops * 1e12, "recipe monitor.peak_tflops"
    device = args.device.type
    bf16 = bool(args.bf16)
    if device == "cuda":
        name = torch.cuda.get_device_name(args.device)
        for key, value in GPU_PEAKS_BF16.items():
            if key in name and bf16:
                return value, f"{name} data sheet (dense bf16)"
    elif device != "cpu":
        return None, f"no peak known for {device}"
    dtype = torch.bfloat16 if bf16 else torch.float32
    label = torch.cuda.get_device_name(args.device) if device == "cuda" else (platform.processor() or platform.machine())
    key = f"{label}|{device}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    # Measured every time and the best kept: a busy machine measures low, never high, so the
    # cached figure only moves toward the true peak.
    measured = measure_matmul_peak(device, dtype, seconds=0.3)
    if measured > known.get(key, 0.0):
        known[key] = measured
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, known)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    return known[key], f"best measured matmul peak ({key})"
