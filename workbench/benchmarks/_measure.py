"""What the benchmarks share: peak memory of a block, device synchronization, repeated timing."""
from __future__ import annotations

import time
from typing import Callable

import torch


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak memory above the start of the block: CUDA's allocator peak, or on CPU the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs) minus its resident set at the start."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.bytes = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                    f.write("5")
            except OSError:
                pass
            self.start = _rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.bytes = max(0, _rss_bytes("VmHWM") - self.start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_repeats(fn: Callable[[], object], repeats: int, device: str) -> tuple[list[float], int]:
    """(seconds of each of `repeats` calls of `fn`, peak memory in bytes over them), after one warm-up
    call (allocations, optimizer state) that is not timed."""
    fn()
    _sync(device)
    times = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return times, mem.bytes
