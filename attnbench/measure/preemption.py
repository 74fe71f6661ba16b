"""Was a timed call slowed by other work on the machine? Per-sample preemption, free cores, GPU throttling.

Per CPU sample (`CpuProbe`, read outside the timed interval, so the timing itself is unchanged): the wall
time, the calling thread's CPU time (`time.thread_time`), the process's CPU time (`time.process_time`), the
process's involuntary context switches (`getrusage`) and, where Linux exposes it (/proc/self/task/*/schedstat),
the longest time any other thread of the process spent runnable but waiting for a CPU. `preempted` decides
(docs/methodology.md, "Contention"):

- the calling thread was off the CPU for more than MARGIN of the wall time (1 - thread_cpu / wall > MARGIN)
  while the process was switched out involuntarily at least once: the main thread waited for a core; or
- another thread of the process (an OpenMP worker) waited in the run queue for more than MARGIN of the wall
  time and at least WAIT_FLOOR_S: the main thread then spins at the barrier for it (its own CPU time looks
  full), so only the worker's wait shows it.

A single-threaded op with an idle second thread is not flagged (the worker sleeps: it is not runnable, so it
does not wait), nor is a long call with a short involuntary switch (its lost fraction stays under MARGIN).
The process's CPU time is recorded but does not decide: Linux accounts the other threads' time at the
scheduler tick (4 ms here), so over a sub-millisecond call it reads 0 or a whole tick.

Free cores (`free_cores`): idle time of all CPUs over a short window from /proc/stat (the load average where
/proc/stat is missing). GPU (`throttled`): nvidia-smi's active clock-event reasons before and after the
repeats.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MARGIN = 0.25  # lost fraction of a sample's wall time above which it counts as preempted
WAIT_FLOOR_S = 100e-6  # a worker's run-queue wait below this is a wake-up, not a preemption
MOSTLY = 0.5  # a visit (or round) is "mostly preempted" from this fraction of its samples on: its median moves
FREE_WINDOW_S = 0.2  # /proc/stat window of the free-core probe


@dataclass(frozen=True)
class CpuSample:
    """What one timed call cost besides its wall time (seconds; involuntary switches as a count)."""

    wall: float
    thread_cpu: float  # CPU time of the calling thread
    process_cpu: float  # CPU time of all threads of the process (tick-granular for the other threads)
    nivcsw: int  # involuntary context switches of the process
    threads: int  # torch threads the call could use
    worker_wait: float | None = None  # longest run-queue wait of another thread; None where not readable

    @property
    def main_lost(self) -> float:
        """Fraction of the wall time the calling thread was off the CPU."""
        return 1.0 - self.thread_cpu / self.wall if self.wall > 0 else 0.0


def preempted(sample: CpuSample, margin: float = MARGIN) -> bool:
    """Whether `sample` was slowed by waiting for a CPU (module docstring)."""
    if sample.wall <= 0:
        return False
    if sample.main_lost > margin and sample.nivcsw > 0:
        return True
    wait = sample.worker_wait
    return wait is not None and sample.threads > 1 and wait > max(margin * sample.wall, WAIT_FLOOR_S)


def fraction(flags: Sequence[float]) -> float:
    """Share of preempted samples (flags 1/0 or True/False); 0 for none."""
    return sum(bool(f) for f in flags) / len(flags) if len(flags) else 0.0


def mostly_preempted(flags: Sequence[float]) -> bool:
    """Half or more of the repeats preempted: the median may then be a preempted repeat's time."""
    return len(flags) > 0 and fraction(flags) >= MOSTLY


class CpuProbe:
    """Reads the clocks around each timed call on the CPU; `sample(wall, before, after)` -> CpuSample.

    Made before the warm-up calls and `focus()`ed after them: from then on it watches the other threads that
    ran during the warm-up (torch's workers, started or woken by the call), not the process's idle threads
    (a progress display, Ray's or a notebook's), whose waits say nothing about the call. Threads started
    later are not watched (they can only make a sample look cleaner than it was, never flag a clean one)."""

    def __init__(self, threads: int):
        self.threads = max(1, threads)
        self._fds: list[int] = []
        self._me = threading.get_native_id()
        self.waits = False
        try:
            self._ran = {tid: self._stat(tid)[0] for tid in self._others()}
        except (OSError, ValueError, IndexError):
            self._ran = None

    def _others(self) -> list[int]:
        return [int(t) for t in os.listdir("/proc/self/task") if int(t) != self._me]

    @staticmethod
    def _stat(tid: int) -> tuple[int, int]:
        """(CPU time, run-queue wait) of a thread of this process, in ns."""
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[1])

    def focus(self) -> None:
        """Watch the threads that used the CPU since the probe was made (or were started since)."""
        if self._ran is None:
            return
        try:
            for tid in self._others():
                try:
                    ran = self._stat(tid)[0] > self._ran.get(tid, -1)
                except (ProcessLookupError, FileNotFoundError):
                    continue
                if ran:
                    self._fds.append(os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY))
            self._read_waits()
            self.waits = True
        except (OSError, ValueError, IndexError):
            self.close()
            self.waits = False

    def _read_waits(self) -> list[int]:
        waits = []
        for fd in self._fds:
            try:
                waits.append(int(os.pread(fd, 128, 0).split()[1]))
            except (ProcessLookupError, FileNotFoundError):  # the thread ended: it waits no more
                waits.append(-1)
        return waits

    def read(self) -> tuple:
        """(thread_cpu, process_cpu, nivcsw, waits) now; call it right before and right after the timed call."""
        waits = self._read_waits() if self.waits else []
        nivcsw = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        process_cpu = time.process_time()
        return time.thread_time(), process_cpu, nivcsw, waits

    def read_after(self) -> tuple:
        """As `read`, in the reverse order (the thread's clock closest to the timed interval on both sides)."""
        thread_cpu, process_cpu = time.thread_time(), time.process_time()
        nivcsw = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        return thread_cpu, process_cpu, nivcsw, self._read_waits() if self.waits else []

    def sample(self, wall: float, before: tuple, after: tuple) -> CpuSample:
        waits = [(b - a) / 1e9 for a, b in zip(before[3], after[3]) if a >= 0 and b >= 0]
        return CpuSample(
            wall=wall,
            thread_cpu=after[0] - before[0],
            process_cpu=after[1] - before[1],
            nivcsw=after[2] - before[2],
            threads=self.threads,
            worker_wait=max(waits, default=0.0) if self.waits else None,
        )

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


# -- free cores --------------------------------------------------------------------------------------
def parse_proc_stat(text: str) -> tuple[int, int, int] | None:
    """(idle jiffies, total jiffies, number of CPUs) from /proc/stat text: idle = idle + iowait of the
    aggregate `cpu` line, total = all its fields but guest time (already inside user); None if unreadable."""
    idle = total = None
    cpus = 0
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            try:
                values = [int(v) for v in parts[1:]]
            except ValueError:
                return None
            if len(values) < 4:
                return None
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])  # user nice system idle iowait irq softirq steal
        elif parts[0].startswith("cpu") and parts[0][3:].isdigit():
            cpus += 1
    if idle is None or total is None or cpus == 0:
        return None
    return idle, total, cpus


def free_between(before: tuple[int, int, int], after: tuple[int, int, int], usable: int | None = None) -> float | None:
    """Free cores between two /proc/stat readings: the idle share of all CPUs' time times their number,
    at most `usable` (the CPUs this process may run on); None when no time passed."""
    d_idle, d_total = after[0] - before[0], after[1] - before[1]
    if d_total <= 0:
        return None
    free = max(0.0, min(1.0, d_idle / d_total)) * after[2]
    return min(free, float(usable)) if usable else free


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(
    window_s: float = FREE_WINDOW_S,
    *,
    stat_path: str = "/proc/stat",
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Cores no other work used over the last `window_s` seconds (this process sleeps meanwhile): from
    /proc/stat, else `usable - load average` (clamped to 0..usable)."""
    usable = usable_cpus()
    try:
        with open(stat_path) as f:
            before = parse_proc_stat(f.read())
        sleep(window_s)
        with open(stat_path) as f:
            after = parse_proc_stat(f.read())
        if before is not None and after is not None:
            free = free_between(before, after, usable)
            if free is not None:
                return free
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        return float(usable)
    return max(0.0, min(float(usable), usable - load))


def auto_threads(default: int, free: float) -> int:
    """`threads: auto` on a CPU: torch's default, at most the free cores rounded (at least 1)."""
    return max(1, min(default, math.floor(free + 0.5)))


def threads_warning(threads: int, free: float, usable: int) -> str | None:
    """One line when an explicit thread count exceeds the free cores (rounded as `auto_threads` rounds)."""
    if threads <= max(1, math.floor(free + 0.5)):
        return None
    return (
        f"threads: {threads} but only {free:.1f} of {usable} cores are free (other work uses the rest): calls "
        "will wait for cores and be flagged contended; use threads: auto or fewer threads, or a quiet machine"
    )


# -- GPU ---------------------------------------------------------------------------------------------
# nvidia-smi clock-event reasons (bit masks) that mean the GPU ran below its sustained clocks: HW slowdown,
# SW thermal, HW thermal, HW power brake. Not: idle (0x1), application clocks setting (0x2), SW power cap
# (0x4: the normal regime of a GPU under sustained load), sync boost (0x10), display clock (0x100).
THROTTLE_BITS = 0x8 | 0x20 | 0x40 | 0x80


def throttled(before: int | None, after: int | None) -> bool | None:
    """Whether either reading of the active clock-event reasons shows a throttle (THROTTLE_BITS); None when
    neither could be read."""
    readings = [r for r in (before, after) if r is not None]
    if not readings:
        return None
    return any(r & THROTTLE_BITS for r in readings)
