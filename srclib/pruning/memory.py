"""Memory of the calibration: peak measurement and the activation-stash budget.

``PeakMemory``: peak memory of a code block: CUDA allocator peak on a GPU, sampled resident set
size on CPU. torch's CPU allocations are invisible to ``tracemalloc`` and ``ru_maxrss`` never
resets, so on CPU a background thread samples /proc/self/statm every ``interval`` seconds (spikes
shorter than that can be missed); the result is reported relative to the RSS at entry.

``stash_bytes`` / ``stash_budget``: one-shot calibration whose token weights come from the SAME
forward's attention mass keeps every prunable linear's inputs of one batch until the forward ends
(srclib.pruning.calibration.run_one_shot). At paper width that stash is L x (batch x T) x sum of input
widths: LLaDA-8B, 40 passes of 4096 tokens, bfloat16, about 258 GB (upper bound 387 GB), more than
one H200. When the bound exceeds the budget the prune code computes the weights in a mass-only
pre-pass instead (the same weights, so the same statistics and masks; one extra blocks-only
forward per batch) and streams the inputs into the statistics.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import torch

__all__ = ["PeakMemory", "rss_bytes", "stash_bytes", "stash_budget", "available_bytes", "STASH_FRACTION"]

# share of the currently free device memory (CPU: MemAvailable) that the online stash may use
STASH_FRACTION = 0.5

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


def stash_bytes(linears: "list[torch.nn.Linear]", passes: int, seq_len: int, element_size: int) -> int:
    """Upper bound on the bytes of one batch's stashed linear inputs: passes x seq_len x the sum of
    the linears' input widths x element_size (linears that share one input tensor, e.g. q/k/v,
    are counted once each: the bound over-counts them)."""
    width = sum(int(lin.in_features) for lin in linears)
    return int(passes) * int(seq_len) * width * int(element_size)


def available_bytes(device: torch.device | str | None = None) -> int:
    """Memory free for new allocations: CUDA ``mem_get_info`` free bytes, or the CPU's
    MemAvailable (/proc/meminfo; without it, a generous 2**62 so that nothing changes)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 ** 62


def stash_budget(device: torch.device | str | None = None) -> int:
    """Bytes the one-shot calibration may hold as stashed inputs: ``STASH_FRACTION`` of the free
    memory of ``device`` (the rest is for the forward's own activations and the statistics)."""
    return int(STASH_FRACTION * available_bytes(device))
