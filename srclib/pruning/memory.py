"""Peak memory of a code block: CUDA allocator peak on a GPU, sampled resident set size on CPU.

torch's CPU allocations are invisible to ``tracemalloc`` and ``ru_maxrss`` never resets, so on
CPU a background thread samples /proc/self/statm every ``interval`` seconds (spikes shorter than
that can be missed); the result is reported relative to the RSS at entry.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import torch

__all__ = ["PeakMemory", "rss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _trim() -> None:
    """Give freed heap pages back to the OS (glibc), so the baseline RSS is not inflated."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    """Current resident set size of this process in bytes."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: lifetime peak is the best available
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakMemory:
    def __init__(self, device: torch.device | str | None = None, interval: float = 0.005):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval = interval
        self.result: dict[str, Any] = {}

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _trim()
            self._base = self._peak = rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak, kind = torch.cuda.max_memory_allocated(self.device), "cuda_allocated"
        else:
            self._stop.set()
            self._thread.join()
            peak, kind = max(self._peak, rss_bytes()), "cpu_rss_sampled"
        self.result = {"kind": kind, "baseline_bytes": int(self._base), "peak_bytes": int(peak),
                       "peak_delta_bytes": int(max(0, peak - self._base))}
