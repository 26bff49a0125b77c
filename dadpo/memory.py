"""Peak memory of a block of work: CUDA allocated bytes on a GPU, resident set size on the CPU.

Used by the trainer (each training run reports its own peak, not the process's lifetime peak) and by
the benchmark. On the CPU the RSS is sampled every few milliseconds by a thread (psutil), after freed
heap is given back to the system, so an earlier stage's leftovers do not hide this block's peak.
"""
from __future__ import annotations

import ctypes
import gc
import threading

import psutil
import torch


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """`with PeakMemory(device) as pm: ...`; then `pm.peak_mb` (peak during the block) and
    `pm.added_mb` (peak minus what was in use when the block started)."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002):
        self.dev = torch.device(device)
        self.interval_s = interval_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
        else:
            _malloc_trim()
            self.base = self.peak = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.peak = torch.cuda.max_memory_allocated(self.dev)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._proc.memory_info().rss)
        return False

    @property
    def peak_mb(self) -> float:
        return self.peak / 2 ** 20

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20
