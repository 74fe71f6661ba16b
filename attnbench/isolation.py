"""Process isolation: run cases in a spawned worker so that a segfault, abort, runaway allocation
or hang costs one case, not the sweep.

The parent sends one case at a time over a pipe and waits at most timeout_s (+ a start-up grace)
for its rows. Outcomes that never reach the parent become rows there:
  - the worker exits on a signal (SIGSEGV, SIGABRT, SIGBUS, ...) -> status crash
  - the worker is SIGKILLed by the OS (typically the OOM killer) or reports MemoryError -> status oom
  - no answer within timeout_s -> the worker is killed, status timeout
A dead or killed worker is replaced before the next case. Workers may get an address-space limit
(RLIMIT_AS, `memory_limit_gb` in the suite) so that a runaway allocation fails inside the worker
(a MemoryError / allocation error -> oom row) instead of taking the machine down.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

STARTUP_GRACE_S = 60.0  # importing torch and building modules in a fresh process


def _worker_main(conn, suite, run_id: str, env_id: str, memory_limit_bytes: int | None) -> None:
    if memory_limit_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    # Import inside the child: spawn starts a clean interpreter.
    from attnbench import registry
    from attnbench.runner import Runner

    registry.load_builtin()
    from pathlib import Path

    registry.load_plugins(suite.plugins, base_dir=Path(suite.path).parent if suite.path else None)
    import torch

    from attnbench.runner import apply_precision_settings

    if suite.threads is not None:
        torch.set_num_threads(suite.threads)
    apply_precision_settings(suite)
    runner = Runner(suite, out=os.devnull, in_worker=True)
    runner.run_id, runner.env_id = run_id, env_id
    from attnbench.measure.env import fingerprint
    from attnbench.runner import _cached_peaks

    runner.peaks = _cached_peaks(suite.device, fingerprint(suite.device, suite.threads))
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        case, prior, time_only = msg
        rows, samples = runner.measure_case(case, prior=prior, time_only=time_only)
        conn.send(("done", (rows, samples)))


def describe_exit(exitcode: int | None) -> tuple[str, str]:
    """(status, message) for a worker that exited without answering."""
    if exitcode is None:
        return "crash", "worker vanished"
    if exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return "oom", f"worker killed by {name} (most likely the out-of-memory killer)"
        return "crash", f"worker died with {name}"
    return "crash", f"worker exited with code {exitcode} without reporting"


class WorkerPool:
    """One spawned worker at a time, replaced whenever it dies or is killed."""

    def __init__(self, suite, run_id: str, env_id: str, memory_limit_gb: float | None = None):
        self.suite = suite
        self.run_id = run_id
        self.env_id = env_id
        # RLIMIT_AS caps virtual memory, which CUDA reserves in bulk: the limit applies to CPU suites only
        self.limit = int(memory_limit_gb * 2**30) if memory_limit_gb and suite.device == "cpu" else None
        self.ctx = mp.get_context("spawn")
        self.proc = None
        self.conn = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker_main, args=(child, self.suite, self.run_id, self.env_id, self.limit), daemon=True
        )
        self.proc.start()
        child.close()
        self.conn = parent
        if not self.conn.poll(STARTUP_GRACE_S):
            self._kill()
            raise RuntimeError("benchmark worker did not start within 60 s")
        try:
            tag, _ = self.conn.recv()
        except EOFError:
            status, message = describe_exit(self._reap())
            raise RuntimeError(f"benchmark worker failed to start: {message}") from None
        if tag != "ready":
            raise RuntimeError(f"benchmark worker sent {tag!r} instead of ready")

    def _reap(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.join(timeout=10)
        code = self.proc.exitcode
        self.proc = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return code

    def _kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        self._reap()

    def run(self, case, timeout_s: float, kill_after_s: float | None = None) -> tuple[str, Any]:
        """("done", (rows, samples)) or (status, message) for crash / oom / timeout.

        The worker is killed after `kill_after_s` (default timeout_s) without an answer."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        try:
            self.conn.send(case)
        except (BrokenPipeError, OSError):
            return describe_exit(self._reap())
        deadline = time.monotonic() + (kill_after_s if kill_after_s is not None else timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                return "timeout", f"ran past timeout_s={timeout_s:g} without returning; worker killed"
            if self.conn.poll(min(remaining, 0.5)):
                try:
                    tag, payload = self.conn.recv()
                except (EOFError, OSError):
                    return describe_exit(self._reap())
                return tag, payload
            if not self.proc.is_alive():
                # drain a result sent just before exit
                if self.conn.poll(0):
                    try:
                        return self.conn.recv()
                    except (EOFError, OSError):
                        pass
                return describe_exit(self._reap())

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive() and self.conn is not None:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=5)
        self._kill()
