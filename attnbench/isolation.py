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

CPU suites start workers with multiprocessing's `forkserver` where the platform has it (Linux), GPU suites and
other platforms with `spawn`. Either way each worker is a new process that has run nothing before its first
case: the fork server is a process that imported torch and nothing else (no op run, no thread pool), so a CPU
worker costs a fork instead of torch's import (about 2.5 s of CPU per round and per replaced worker on a 2-core
machine). GPU workers are spawned: a process must not fork once CUDA may have been initialised in it, and
their `env` (CUDA_VISIBLE_DEVICES) must be set before torch is imported. A worker gets the parent's
environment as it is when the worker starts, not the fork server's from when it started.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from typing import Any

STARTUP_GRACE_S = 60.0  # importing torch and building modules in a fresh process
_SPAWN_ENV_LOCK = threading.Lock()  # a pool slot's environment (CUDA_VISIBLE_DEVICES) is set around its spawn


def start_context(device: str = "cpu"):
    """forkserver (its server preloads torch) for a CPU suite where available, else spawn (module docstring)."""
    if str(device) == "cpu" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch"])  # takes effect when this process first starts its fork server
        return ctx
    return mp.get_context("spawn")


def _worker_main(
    conn,
    suite,
    run_id: str,
    env_id: str,
    memory_limit_bytes: int | None,
    threads: int | None = None,
    extra_fp: dict | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    if environ is not None:  # the parent's environment now, not the fork server's from when it started
        os.environ.clear()
        os.environ.update(environ)
    if memory_limit_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    # Imported here, in the worker: the parent's modules are not this process's (spawn or a fork server).
    from attnbench.execute import CaseExecutor, prepare_process

    setup = prepare_process(suite, threads=threads, load_plugins=True, extra_fp=extra_fp)
    executor = CaseExecutor(suite, run_id, env_id, peaks=setup.peaks)
    own = None
    if extra_fp is not None:  # a pool slot: this worker's own device and settings make its env_id
        executor.env_id = setup.env_id
        own = (setup.env_id, setup.fingerprint)
    conn.send(("ready", own))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        case, prior, time_only = msg
        rows, samples = executor.measure(case, prior=prior, time_only=time_only)
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
    """One spawned worker at a time, replaced whenever it dies or is killed.

    A slot of the local pool (attnbench.executors.local) passes `threads` (its share of the CPU cores),
    `env` (e.g. CUDA_VISIBLE_DEVICES, set before the child imports torch) and `extra_fp` (recorded in the
    worker's own fingerprint, whose env_id then marks its rows; `fingerprint` holds it once started)."""

    def __init__(
        self,
        suite,
        run_id: str,
        env_id: str,
        memory_limit_gb: float | None = None,
        *,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        extra_fp: dict[str, Any] | None = None,
    ):
        self.suite = suite
        self.run_id = run_id
        self.env_id = env_id
        # RLIMIT_AS caps virtual memory, which CUDA reserves in bulk: the limit applies to CPU suites only
        self.limit = int(memory_limit_gb * 2**30) if memory_limit_gb and suite.device == "cpu" else None
        self.threads = threads
        self.env = dict(env or {})
        self.extra_fp = extra_fp
        self.fingerprint: dict[str, Any] | None = None
        self.ctx = start_context(suite.device)
        self.proc = None
        self.conn = None
        self.worker = ""  # host/pid of the worker that ran the last case (the rows' `worker` column)

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        with _SPAWN_ENV_LOCK:  # the worker's environment: this process's, with the slot's settings (its device)
            saved = {k: os.environ.get(k) for k in self.env}
            os.environ.update(self.env)
            environ = dict(os.environ)
            self.proc = self.ctx.Process(
                target=_worker_main,
                args=(child, self.suite, self.run_id, self.env_id, self.limit, self.threads, self.extra_fp, environ),
                daemon=True,
            )
            try:
                self.proc.start()
            except BaseException:
                self.proc = None  # never started: nothing to join or kill
                raise
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        child.close()
        self.conn = parent
        if not self.conn.poll(STARTUP_GRACE_S):
            self._kill()
            raise RuntimeError("benchmark worker did not start within 60 s")
        try:
            tag, own = self.conn.recv()
        except EOFError:
            status, message = describe_exit(self._reap())
            raise RuntimeError(f"benchmark worker failed to start: {message}") from None
        if tag != "ready":
            raise RuntimeError(f"benchmark worker sent {tag!r} instead of ready")
        if own is not None:
            self.env_id, self.fingerprint = own

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
        self.worker = f"{socket.gethostname()}/pid{self.proc.pid}"
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
