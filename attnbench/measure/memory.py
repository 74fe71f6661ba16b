"""Peak memory of one call, really per case.

CUDA: torch.cuda.max_memory_allocated over the call minus what was allocated before it
(note `cuda_max_allocated`).
CPU: the PyTorch CPU allocator's peak over the call, read from the profiler's memory events
("Total Allocated" after every allocation and free) minus the total before the call
(note `cpu_profiler_allocated`). This counts tensor memory PyTorch allocates during the call and
nothing left over from earlier cases, unlike process RSS.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Callable

import torch


def peak_memory(fn: Callable[[], Any], device: str = "cpu") -> tuple[int, str]:
    """(peak bytes allocated during one call of fn beyond what was allocated before, note)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return int(peak), "cuda_max_allocated"
    return _cpu_peak(fn), "cpu_profiler_allocated"


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's native start/stop log lines (written to fd 2 by C++ code)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
            del out  # frees of the output count as after-peak events, not before
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh).get("traceEvents", [])
    finally:
        os.unlink(path)
    mem = sorted(
        (e for e in events if e.get("name") == "[memory]" and int(e.get("args", {}).get("Device Type", 0)) == 0),
        key=lambda e: (float(e.get("ts", 0)), int(e["args"].get("Ev Idx", 0))),
    )
    if not mem:
        return 0
    first = mem[0]["args"]
    baseline = int(first["Total Allocated"]) - int(first["Bytes"])
    peak = max(int(e["args"]["Total Allocated"]) for e in mem)
    return max(0, peak - baseline)
