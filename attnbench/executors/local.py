"""`--workers N|auto`: one node, every device. N slots, each an isolated worker process (WorkerPool) bound
to one device before it imports torch (CUDA_VISIBLE_DEVICES = that GPU; on CPU each slot gets 1/N of the
cores as torch threads, recorded in its fingerprint). Slots pull (unit, round) tasks from one scheduler,
so a slot never runs two cases at once and no device is shared. A slot's worker process serves one round:
when its next task belongs to another round it starts a fresh one (as the single-worker path does per
round), so every round of a case runs in a fresh process. Faults stay rows, exactly as with one worker.

Threads in the driver only wait on the workers' pipes; the driver's main thread is the only writer.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from typing import Any

from attnbench import rounds
from attnbench.errors import AttnbenchError
from attnbench.execute import this_worker
from attnbench.executors.schedule import Concurrency, RoundScheduler, Task
from attnbench.isolation import WorkerPool


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES entries (its own list when set, else 0..count-1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and not d.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def slot_settings(device: str, workers: int | str, threads: int | None) -> list[dict[str, Any]]:
    """Per slot: env (device binding) and torch threads. GPU: one slot per device, never two on one;
    CPU: `auto` = one slot per `threads` cores (default 1), each slot cores // N threads unless set."""
    if device == "cuda":
        gpus = visible_gpus()
        n = len(gpus) if workers == "auto" else int(workers)
        if not gpus:
            raise AttnbenchError(
                "--workers: no GPU is visible; run a cpu suite (--set device=cpu) or check CUDA_VISIBLE_DEVICES"
            )
        if n > len(gpus):
            raise AttnbenchError(
                f"--workers {n} but only {len(gpus)} GPU(s) are visible: a worker needs a GPU "
                "of its own (give at most that many, or `auto`)"
            )
        return [{"env": {"CUDA_VISIBLE_DEVICES": gpus[i]}, "threads": threads} for i in range(n)]
    cores = os.cpu_count() or 1
    n = max(1, cores // (threads or 1)) if workers == "auto" else int(workers)
    share = threads if threads is not None else max(1, cores // n)
    return [{"env": {}, "threads": share} for _ in range(n)]


class _Slot:
    def __init__(self, index: int, settings: dict[str, Any]):
        self.index = index
        self.env = settings["env"]
        self.threads = settings["threads"]
        self.pool: WorkerPool | None = None
        self.round = -1
        self.inbox: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None


class LocalPool:
    """The local worker pool; `run(runner)` drives the runner's sweep and returns its RunSummary."""

    def __init__(self, workers: int | str):
        self.workers = workers

    def run(self, runner):
        suite = runner.suite
        if suite.hardware:
            raise AttnbenchError(
                f"the suite names hardware kinds ({', '.join(suite.hardware)}): run it with "
                "--executor ray on a cluster that has them"
            )
        slots = [_Slot(i, s) for i, s in enumerate(slot_settings(suite.device, self.workers, suite.threads))]
        state = runner.open_run()
        unit_list = rounds.units(state.cases)
        sched = RoundScheduler(unit_list, state.rounds, suite.order_seed)
        extra = {
            "executor": "local",
            "workers": len(slots),
            "exclusive": suite.exclusive or "device",
            "hostname": socket.gethostname(),
        }
        inflight = Concurrency()
        results: queue.Queue = queue.Queue()
        envs = {runner.env_id}

        def serve(slot: _Slot) -> None:
            while (job := slot.inbox.get()) is not None:
                try:
                    self._run_task(runner, slot, job, extra, inflight, results)
                except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which re-raises
                    results.put(("failed", slot, exc))
                    return
                results.put(("task", slot, job[0]))

        for slot in slots:
            slot.thread = threading.Thread(target=serve, args=(slot,), name=f"attnbench-slot{slot.index}", daemon=True)
            slot.thread.start()
        idle = list(slots)
        try:
            while True:
                while idle and (task := sched.next_ready()) is not None:
                    todo = [c for c in unit_list[task.unit] if state.pending(c, task.round)]
                    if not todo:
                        sched.finish(task)
                        continue
                    idle.pop(0).inbox.put((task, todo, {c.case_id: state.earlier(c) for c in todo}))
                if sched.done and len(idle) == len(slots):
                    break
                msg = results.get()
                if msg[0] == "start":
                    if runner.progress:
                        runner.progress.case_start(state.step, msg[1])
                elif msg[0] == "case":
                    _, task, case, rows, samples, worker, concurrent, env, sweep = msg
                    if env is not None and env[0] not in envs:
                        state.writer.write_env(*env)
                        envs.add(env[0])
                    runner.record(
                        state, case, task.round, rows, samples, worker=worker, concurrent=concurrent, sweep=sweep
                    )
                elif msg[0] == "task":
                    sched.finish(msg[2])
                    idle.append(msg[1])
                else:
                    raise msg[2]
        finally:
            for slot in slots:
                slot.inbox.put(None)
            for slot in slots:
                slot.thread.join(timeout=max(30.0, suite.timeout_s * 1.2))
                if slot.pool is not None:
                    slot.pool.close()
            state.writer.close()
        return state.summary

    @staticmethod
    def _run_task(
        runner, slot: _Slot, job: tuple, extra: dict[str, Any], inflight: Concurrency, results: queue.Queue
    ) -> None:
        task, todo, priors = job
        suite = runner.suite
        if slot.pool is None or slot.round != task.round:  # a fresh worker process for every round
            if slot.pool is not None:
                slot.pool.close()
            slot_extra = dict(extra, cuda_visible_devices=slot.env.get("CUDA_VISIBLE_DEVICES"))
            slot.pool = WorkerPool(
                suite,
                runner.run_id,
                runner.env_id,
                suite.memory_limit_gb,
                threads=slot.threads,
                env=slot.env,
                extra_fp=slot_extra,
            )
            slot.round = task.round
        n_rounds, n_sweeps = rounds.visits(suite)
        final = task.round == n_rounds - 1
        for case in todo:
            history = priors[case.case_id]
            for sweep in range(n_sweeps):  # a task's sweeps run back to back (docs/methodology.md: Sweeps)
                last = final and sweep == n_sweeps - 1
                results.put(("start", case))
                while (token := inflight.enter(exclusive=suite.exclusive == "node")) is None:
                    time.sleep(0.02)  # exclusive: node - one case per host at a time
                slot.pool.worker = ""
                try:
                    rows, samples = runner.case_executor.run(case, prior=history, time_only=not last, pool=slot.pool)
                finally:
                    concurrent = inflight.leave(token)
                pool = slot.pool
                env = (pool.env_id, pool.fingerprint) if pool.fingerprint is not None else None
                if env is not None:
                    for row in rows:
                        row["env_id"] = env[0]
                worker = pool.worker or this_worker()  # a planned skip is decided here, in the driver
                results.put(("case", task, case, rows, samples, worker, concurrent, env, sweep))
                if rows:  # the case ended (its last visit, or a failure)
                    break
                history = history.then(samples.get("latency", []))


__all__ = ["LocalPool", "Task", "slot_settings", "visible_gpus"]
