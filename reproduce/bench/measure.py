"""Measuring primitives: wall-clock of a block, the device's dense matmul rate and copy bandwidth,
the bytes a model holds, and the facts about the machine a timing depends on.

Peak memory is the suite's own meter (dadpo.memory.PeakMemory: CUDA peak, or the process RSS sampled
by psutil), so the benchmark and the trainer report memory the same way.
"""
from __future__ import annotations

import contextlib
import statistics
import time

import psutil
import torch

from dadpo.memory import PeakMemory
from reproduce.provenance import cpu_model

__all__ = ["PeakMemory", "Budget", "sync", "timed", "matmul_peak_tflops", "copy_bandwidth_gbs", "measured_peaks",
           "model_bytes", "device_name", "autocast", "loadavg", "dtype_name"]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device):
    """(seconds, result) of fn(), with the device drained before and after."""
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def _median_seconds(fn, dev: torch.device, inner: int, reps: int) -> float:
    fn()
    return statistics.median(timed(lambda: [fn() for _ in range(inner)], dev)[0] / inner for _ in range(reps))


def matmul_peak_tflops(dev: torch.device, dtype: torch.dtype, n: int | None = None, inner: int | None = None,
                       reps: int = 5) -> float:
    """Dense n x n x n matmul rate on random data, TFLOP/s (median of `reps` timings of `inner` products)."""
    n = n or (8192 if dev.type == "cuda" else 1024)
    inner = inner or (10 if dev.type == "cuda" else 2)
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    return 2 * n ** 3 / _median_seconds(lambda: a @ b, dev, inner, reps) / 1e12


def copy_bandwidth_gbs(dev: torch.device, mbytes: int | None = None, inner: int = 5, reps: int = 5) -> float:
    """Device copy bandwidth, GB/s, counting bytes read plus bytes written."""
    n = (mbytes or (1024 if dev.type == "cuda" else 256)) * 2 ** 20 // 4
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    return 2 * n * 4 / _median_seconds(lambda: dst.copy_(src), dev, inner, reps) / 1e9


def measured_peaks(dev: torch.device) -> dict:
    """The rates MFU and the decoding floor are measured against, in this process."""
    out = {"matmul_bf16_tflops": matmul_peak_tflops(dev, torch.bfloat16), "copy_gbs": copy_bandwidth_gbs(dev)}
    if dev.type == "cpu":  # CPU training runs in fp32
        out["matmul_fp32_tflops"] = matmul_peak_tflops(dev, torch.float32)
    return out


def model_bytes(*models) -> int:
    """Bytes of the parameters and buffers of `models`, tensors shared between them counted once."""
    seen, total = set(), 0
    for m in models:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def autocast(dev: torch.device):
    """bf16 autocast on a GPU (as the suite trains there), nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: on a shared machine they say how noisy the timings are."""
    return [round(x, 2) for x in psutil.getloadavg()]


def dtype_name(model_or_dtype) -> str:
    dtype = model_or_dtype if isinstance(model_or_dtype, torch.dtype) else next(model_or_dtype.parameters()).dtype
    return str(dtype).removeprefix("torch.")


class Budget:
    """Seconds left of a wall-clock allowance; later stages are skipped with a row that says so."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)
