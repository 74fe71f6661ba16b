"""`--executor ray [--address ADDR]`: every (unit, round) is one Ray task.

Placement: a task asks for `num_gpus=1` on a cuda suite (Ray sets CUDA_VISIBLE_DEVICES to its GPU before
the task runs), `num_cpus=threads` (default 1) on a cpu suite, plus, when the suite names hardware kinds,
a sliver of that kind's resource: a custom resource of that name (`ray start --resources='{"H100": 8}'`)
or Ray's detected `accelerator_type:<kind>`. Ray schedules queued tasks onto free resources (dynamic, no
static shards) and retries a task whose worker or node was lost (`max_retries`).

Node loss: the driver watches the cluster's nodes; a node that leaves is one warning naming it (node id, host,
address, hardware kind). Its tasks run again on the nodes left where their resources allow (Ray's retries);
a task that no live node can run (its kind's only nodes are gone) waits up to NODE_WAIT_S for a node that can
(an autoscaler's replacement), then is cancelled and its cases become `crash` rows naming the lost node.

Fresh process per round: tasks are declared with `max_calls=1`, so Ray starts a new worker process for
every task and every round of a case runs in its own process (as `attnbench.rounds` requires); a task is named
`attnbench unit U round R [KIND]` (its process title, `ray list tasks`). Inside the task
the unit's cases run in that process, ascending, with OOM prediction along the ladder; a case fault is a
row, as in-process; a hang is caught by the driver, which cancels the task after its time budget.

The driver is the only writer: it receives a task's rows when the task finishes, writes them with the
usual durability, and records every worker's fingerprint (host, GPU, CUDA_VISIBLE_DEVICES, hardware kind)
in FILE.env.json. A small coordinator actor, on the driver's node (it outlives any other node), counts the
cases in flight per node (`concurrent`), serialises them under `exclusive: node`, and notes when and where each
task started (for the time budget).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import Any

from attnbench.errors import AttnbenchError
from attnbench.executors.schedule import Concurrency, RoundScheduler, Task

EXTRA = "distributed"
MAX_RETRIES = 3  # a lost worker or node: the task runs again (its rows were not written yet)
TASK_MARGIN_S = 60.0  # start-up of a fresh Ray worker (imports torch) on top of the cases' timeouts
NODE_WAIT_S = 120.0  # a task no live node can run after a node left waits this long for one to join
NODE_POLL_S = 1.0  # how often the driver reads the cluster's node list


def import_ray():
    try:
        import ray
    except ImportError:
        raise AttnbenchError(
            f"--executor ray needs Ray, which is not installed: pip install 'attnbench[{EXTRA}]' (the `{EXTRA}` extra)"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """A host:port address must accept a TCP connection: ray.init would otherwise retry for minutes."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise AttnbenchError(
            f"--address {address!r}: give the head node as HOST:PORT (e.g. head:6379), ray://HOST:PORT or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise AttnbenchError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start "
            "one with `ray start --head` and pass the address it prints"
        ) from None


def connect(ray, address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a local Ray instance; False when Ray was already initialised
    (by the caller, e.g. a test), which then also owns its shutdown."""
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address:
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to join is a one-line user error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"--address {address}" if address else "starting a local Ray instance"
        raise AttnbenchError(f"{where}: {reason}") from None
    return True


def kind_resource(kind: str, cluster: dict[str, float]) -> str | None:
    """The Ray resource that marks nodes of hardware kind `kind`: a custom resource of that name, else
    Ray's accelerator type (`accelerator_type:H100`); None when the cluster has neither."""
    for name in (kind, f"accelerator_type:{kind}"):
        if cluster.get(name, 0) > 0:
            return name
    return None


class Coordinator:
    """Per-node concurrency (and exclusive: node), task start times. Runs as a Ray actor in the cluster."""

    def __init__(self) -> None:
        self.nodes: dict[str, Concurrency] = {}
        self.started: dict[str, float] = {}

    def enter(self, node: str, exclusive: bool) -> int | None:
        return self.nodes.setdefault(node, Concurrency()).enter(exclusive)

    def leave(self, node: str, token: int) -> int:
        return self.nodes[node].leave(token)

    def task_started(self, key: str, node: str) -> None:
        self.started[key] = (time.time(), node)

    def start_times(self) -> dict[str, tuple[float, str]]:
        return dict(self.started)


class NodeWatch:
    """The cluster's live nodes as the driver last read them (`ray.nodes()`, at most every NODE_POLL_S): warns
    once for each node that leaves, and finds the tasks that no live node can run any more."""

    def __init__(self, ray, kinds: dict[str, str]):
        self.ray = ray
        self.kinds = kinds  # Ray resource -> hardware kind it marks
        self.alive: dict[str, dict] = {}  # node id -> its ray.nodes() entry
        self.lost: dict[str, dict] = {}  # node id -> its last entry while alive
        self.noticed: dict[str, float] = {}  # node id -> when its loss was noticed (time.monotonic)
        self.read_at = float("-inf")
        self.poll()

    def poll(self) -> list[str]:
        """The ids of the nodes that left since the last read (each warned about once)."""
        if time.monotonic() - self.read_at < NODE_POLL_S:
            return []
        self.read_at = time.monotonic()
        alive = {n["NodeID"]: n for n in self.ray.nodes() if n.get("Alive")}
        gone = [node for node in self.alive if node not in alive]
        for node in gone:
            self.lost[node], self.noticed[node] = self.alive[node], self.read_at
            warnings.warn(
                f"Ray node {self.describe(node)} left the cluster mid-sweep: its tasks run again on the nodes left "
                f"where their resources allow; cases no live node can run become crash rows after "
                f"{NODE_WAIT_S:.0f} s",
                stacklevel=2,
            )
        self.alive = alive
        return gone

    def describe(self, node: str) -> str:
        entry = self.lost.get(node) or self.alive.get(node) or {}
        kinds = [kind for res, kind in self.kinds.items() if entry.get("Resources", {}).get(res, 0) > 0]
        where = [f"host {entry.get('NodeManagerHostname', '?')}", str(entry.get("NodeManagerAddress", "?"))]
        if kinds:
            where.append(f"hardware kind {'/'.join(kinds)}")
        return f"{node} ({', '.join(where)})"

    def stranded(self, need: dict[str, float]) -> tuple[list[str], list[str]]:
        """For a task needing `need`: ([lost nodes that could run it], [resources no live node offers]) when no
        live node can run it but a lost one could; ([], []) otherwise (an unmet need no lost node met is Ray's
        to queue: an autoscaler may add that node)."""

        def fits(entry: dict) -> bool:
            return all(entry.get("Resources", {}).get(r, 0) >= v for r, v in need.items() if v > 0)

        if any(fits(entry) for entry in self.alive.values()):
            return [], []
        lost = [node for node, entry in self.lost.items() if fits(entry)]
        if not lost:
            return [], []
        missing = [
            r
            for r, v in need.items()
            if v > 0 and not any(e.get("Resources", {}).get(r, 0) >= v for e in self.alive.values())
        ]
        return lost, missing


def run_unit_task(
    suite,
    run_id: str,
    key: str,
    todo: list,
    priors: dict,
    final: bool,
    oom_at: dict,
    extra_fp: dict,
    threads: int | None,
    coordinator,
) -> dict[str, Any]:
    """The body of one Ray task: one round of one unit, measured in this (fresh) worker process."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    coordinator.task_started.remote(key, node)
    from attnbench import rounds
    from attnbench.execute import CaseExecutor, cached_peaks, prepare_process

    extra = dict(
        extra_fp,
        hostname=socket.gethostname(),
        ray_node_id=node,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    setup = prepare_process(suite, threads=threads, load_plugins=True, extra_fp=extra)
    # peaks looked up with the recorded fingerprint (extras included)
    executor = CaseExecutor(suite, run_id, setup.env_id, peaks=cached_peaks(suite.device, setup.fingerprint))
    executor.oom_at.update(oom_at)
    out = []
    sweeps = rounds.visits(suite)[1]
    for case in todo:
        history = priors[case.case_id]
        for sweep in range(sweeps):  # a task's sweeps run back to back (docs/methodology.md: Sweeps)
            while (token := ray.get(coordinator.enter.remote(node, suite.exclusive == "node"))) is None:
                time.sleep(0.05)  # exclusive: node - one case on this node at a time
            try:
                rows, samples = executor.run(case, prior=history, time_only=not (final and sweep == sweeps - 1))
            finally:
                concurrent = ray.get(coordinator.leave.remote(node, token))
            out.append((case, rows, samples, concurrent, sweep))
            if rows:  # the case ended (its last visit, or a failure)
                break
            history = history.then(samples.get("latency", []))
    return {"env": (executor.env_id, setup.fingerprint), "worker": f"{node[:12]}/pid{os.getpid()}", "cases": out}


class RayExecutor:
    """Runs a sweep's (unit, round) tasks on a Ray cluster; `run(runner)` returns the RunSummary.

    `gpus_per_task` (default 1 on cuda, 0 on cpu) and `local_cpus` (CPUs of a local instance started here)
    exist for tests and laptops; the CLI uses the defaults."""

    def __init__(
        self,
        address: str | None = None,
        *,
        gpus_per_task: float | None = None,
        local_cpus: int | None = None,
        max_retries: int = MAX_RETRIES,
    ):
        self.address = address
        self.gpus_per_task = gpus_per_task
        self.local_cpus = local_cpus
        self.max_retries = max_retries
        self.startup_s: float | None = None  # seconds ray.init took (None: Ray was already running)

    def run(self, runner):
        from attnbench import rounds
        from attnbench.execute import oom_key, this_worker

        ray = import_ray()
        suite = runner.suite
        t0 = time.perf_counter()
        owned = connect(ray, self.address, self.local_cpus)
        self.startup_s = time.perf_counter() - t0 if owned else None
        try:
            options = self._task_options(ray, suite)
            state = runner.open_run()
            unit_list = rounds.units(state.cases)
            sched = RoundScheduler(unit_list, state.rounds, suite.order_seed)
            coordinator = ray.remote(Coordinator).options(num_cpus=0, **self._on_this_node(ray)).remote()
            remote = ray.remote(max_calls=1)(run_unit_task)  # a fresh worker process for every task
            inflight: dict[Any, tuple[Task, list, str]] = {}
            kinds = {next(iter(o["resources"])): kind for kind, o in options.items() if o.get("resources")}
            watch = NodeWatch(ray, kinds)
            envs = {runner.env_id}
            extra = {"executor": "ray", "exclusive": suite.exclusive or "device"}
            threads = suite.threads or (1 if suite.device == "cpu" else None)
            budget_per_case = suite.timeout_s * 1.1 + 2.0
            try:
                while not sched.done:
                    while (task := sched.next_ready()) is not None:
                        todo = [c for c in unit_list[task.unit] if state.pending(c, task.round)]
                        for case in [c for c in todo if c.skip]:  # a planned skip needs no worker: made here
                            rows, samples = runner.case_executor.run(case)
                            runner.record(state, case, task.round, rows, samples, worker=this_worker(), concurrent=None)
                        todo = [c for c in todo if not c.skip]
                        if not todo:
                            sched.finish(task)
                            continue
                        kind = todo[0].hardware
                        key = f"{task.unit}/{task.round}"
                        oom_at = {k: v for k, v in runner.case_executor.oom_at.items() if k == oom_key(todo[0])}
                        name = f"attnbench unit {task.unit} round {task.round + 1}" + (f" {kind}" if kind else "")
                        ref = remote.options(name=name, **options[kind]).remote(
                            suite,
                            runner.run_id,
                            key,
                            todo,
                            {c.case_id: state.earlier(c) for c in todo},
                            task.round == state.rounds - 1,
                            oom_at,
                            dict(extra, hardware_kind=kind or None),
                            threads,
                            coordinator,
                        )
                        inflight[ref] = (task, todo, key)
                    if not inflight:
                        continue
                    ready, _ = ray.wait(list(inflight), num_returns=1, timeout=2.0)
                    for ref in ready:
                        task, todo, key = inflight.pop(ref)
                        self._collect(ray, runner, state, ref, task, todo, envs)
                        sched.finish(task)
                    watch.poll()
                    if watch.lost:
                        self._strand(ray, runner, state, sched, watch, inflight, options, envs)
                    if not ready:
                        self._cancel_overdue(ray, coordinator, inflight, budget_per_case, set(watch.lost))
            finally:
                for ref in inflight:
                    ray.cancel(ref, force=True)
                state.writer.close()
            return state.summary
        finally:
            if owned:
                ray.shutdown()

    @staticmethod
    def _on_this_node(ray) -> dict[str, Any]:
        """Actor options that keep it on the driver's node (which any other node's loss leaves running)."""
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - e.g. a Ray client driver: Ray places the actor
            return {}
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}

    def _strand(self, ray, runner, state, sched, watch, inflight, options, envs) -> None:
        """In-flight tasks that only a lost node could run: NODE_WAIT_S after that node's loss was noticed, with
        no live node that can run them, each is cancelled and its cases become crash rows naming the lost node
        (a task that finished meanwhile is collected as usual)."""
        now = time.monotonic()
        for ref, (task, todo, _) in list(inflight.items()):
            opts = options[todo[0].hardware]
            need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **opts.get("resources", {})}
            lost, missing = watch.stranded(need)
            if not lost or now - max(watch.noticed[node] for node in lost) < NODE_WAIT_S:
                continue
            inflight.pop(ref)
            if ray.wait([ref], timeout=0)[0]:  # it finished after all
                self._collect(ray, runner, state, ref, task, todo, envs)
            else:
                ray.cancel(ref, force=True)
                nodes = "; ".join(watch.describe(node) for node in lost)
                kind = todo[0].hardware
                message = (
                    f"lost with Ray node {nodes}, which left the cluster; no live node offers "
                    f"{', '.join(missing)} (waited {NODE_WAIT_S:.0f} s): bring such a node back and run these "
                    f"cases again into a new --out" + (f" (--set 'hardware=[{kind}]')" if kind else "")
                )
                started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
                for case in todo:
                    rows = [runner.case_executor.status_row(case, started, "crash", message)]
                    runner.record(state, case, task.round, rows, {}, worker="ray", concurrent=None)
            sched.finish(task)

    def _task_options(self, ray, suite) -> dict[str, dict[str, Any]]:
        """Ray options per hardware kind ("" = any node)."""
        gpus = self.gpus_per_task if self.gpus_per_task is not None else (1 if suite.device == "cuda" else 0)
        cpus = 0 if gpus else (suite.threads or 1)
        base = dict(num_gpus=gpus, num_cpus=cpus, max_retries=self.max_retries, retry_exceptions=False)
        if not suite.hardware:
            return {"": base}
        cluster = ray.cluster_resources()
        options = {}
        for kind in suite.hardware:
            resource = kind_resource(kind, cluster)
            if resource is None:
                have = sorted(
                    k for k in cluster if not k.startswith("node:") and k not in ("memory", "object_store_memory")
                )
                raise AttnbenchError(
                    f"hardware kind {kind!r} is not in the Ray cluster (resources: {', '.join(have)});"
                    f" start its nodes with `ray start --resources='{{\"{kind}\": 1}}'` or use "
                    "a GPU type Ray detects (accelerator_type)"
                )
            options[kind] = dict(base, resources={resource: 0.001})
        return options

    def _collect(self, ray, runner, state, ref, task: Task, todo: list, envs: set) -> None:
        """Write a finished task's cases; a task that failed for good becomes rows for each of its cases."""
        from ray.exceptions import RayError, TaskCancelledError

        try:
            result = ray.get(ref)
        except (RayError, OSError) as exc:
            status = "timeout" if isinstance(exc, TaskCancelledError) else "crash"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            message = (
                "ran past its time budget; Ray task cancelled"
                if status == "timeout"
                else f"Ray task failed after {self.max_retries} retries: {type(exc).__name__}: {reason}"
            )
            started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            for case in todo:
                rows = [runner.case_executor.status_row(case, started, status, message)]
                runner.record(state, case, task.round, rows, {}, worker="ray", concurrent=None)
            return
        env_id, fp = result["env"]
        if env_id not in envs:
            state.writer.write_env(env_id, fp)
            envs.add(env_id)
        for case, rows, samples, concurrent, sweep in result["cases"]:
            for row in rows:
                row["env_id"] = env_id
            runner.case_executor.note_oom(case, rows)
            runner.record(
                state, case, task.round, rows, samples, worker=result["worker"], concurrent=concurrent, sweep=sweep
            )

    @staticmethod
    def _cancel_overdue(ray, coordinator, inflight: dict, budget_per_case: float, lost: set[str]) -> None:
        """Cancel tasks past their time budget, counted from their start (a start on a lost node does not
        count: that try died with its node, and Ray runs the task again)."""
        starts = ray.get(coordinator.start_times.remote())
        now = time.time()
        for ref, (_, todo, key) in list(inflight.items()):
            began, node = starts.get(key, (None, None))
            if began is not None and node not in lost and now - began > TASK_MARGIN_S + budget_per_case * len(todo):
                ray.cancel(ref, force=True)
