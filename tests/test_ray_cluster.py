"""`--executor ray --address` on a 2-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), joined at
its head's address as a user joins `ray start --head`: a node removed mid-sweep loses no case and doubles none.
Skipped where Ray is not installed (CI installs the `distributed` extra)."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from sleepy_suite import sleepy_suite  # noqa: E402

from attnbench import results  # noqa: E402
from attnbench.cli import main  # noqa: E402
from attnbench.executors import ray_cluster  # noqa: E402
from attnbench.plan import plan  # noqa: E402
from attnbench.suite import load_suite  # noqa: E402


def live_tasks(marks: Path) -> dict[int, str]:
    """pid -> name of the Ray tasks running in the processes that marked `marks` (tests/plugins/sleepy.py): Ray
    sets a worker's process title to `ray::` + its task's name, and to `ray::IDLE` once the task is done."""
    names = {}
    for mark in marks.iterdir():
        try:
            title = Path("/proc", mark.name, "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:  # it has exited
            continue
        if title.startswith("ray::attnbench"):
            names[int(mark.name)] = title
    return names


@pytest.mark.slow
def test_node_lost_mid_sweep_every_case_once(tmp_path, capsys, monkeypatch):
    """Head (the driver's node): 1 CPU, kind H100. Worker: 1 CPU, kinds H100 and A100, so it runs the A100 tasks
    and, where Ray sends it one, an H100 task. The worker is removed while it runs an H100 task with an A100 case
    not finished, or else while it runs the last A100 task: an H100 task running there runs again on the head;
    the A100 cases not finished by then (the worker was their only node) become crash rows naming the lost node.
    Each case has its row exactly once."""
    monkeypatch.setattr(ray_cluster, "NODE_WAIT_S", 0.0)  # no autoscaler here: no node will replace it
    body = (
        sleepy_suite("nodeloss")
        .replace("softmax_sdpa", "test_sleepy")
        .replace("min: 3, max: 3", "min: 40, max: 40")  # 0.8 s per case: removed mid-case
        .replace("rounds: 2", "rounds: 1\n    hardware: [H100, A100]")
        .replace("batch: [1, 2]", "batch: [1]")
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(body))
    kind_of = {case.case_id: case.hardware for case in plan(load_suite(suite))}  # 2 per kind
    n_a100 = sum(kind == "A100" for kind in kind_of.values())
    marks = {name: tmp_path / name for name in ("head", "worker")}
    for folder in marks.values():
        folder.mkdir()

    def node_args(name: str, cpus: int, kinds: list[str]) -> dict:
        res = {kind: 1 for kind in kinds}
        return dict(num_cpus=cpus, resources=res, env_vars={"ATTNBENCH_TEST_PIDS": str(marks[name])})

    # Cluster writes its address where a plain ray.init() on this machine would join it: keep that file (and the
    # sessions, under a path short enough for Ray's sockets) private to this test
    ray_tmp = tempfile.mkdtemp(prefix="attnbench-ray-")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    stop = threading.Event()
    removed: dict = {}
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True, head_node_args=dict(node_args("head", 1, ["H100"]), include_dashboard=False)
        )
        head = cluster.head_node.node_id
        worker = cluster.add_node(**node_args("worker", 1, ["H100", "A100"]))

        def remove_worker_mid_h100_task():
            """Remove the worker while it runs an H100 task and an A100 case is not finished (or, should no H100
            task come, while it runs the last A100 task)."""
            seen: dict[int, str] = {}  # every task that ran on the worker
            deadline = time.time() + 120
            while not stop.is_set() and time.time() < deadline:
                live = live_tasks(marks["worker"])
                seen.update(live)
                a100_live = any("A100" in name for name in live.values())
                a100_seen = sum("A100" in name for name in seen.values())
                if (a100_live or a100_seen < n_a100) and (
                    any("H100" in n for n in live.values()) or a100_seen == n_a100
                ):
                    removed.update(at=time.time(), running=sorted(live.values()))
                    cluster.remove_node(worker)
                    return
                time.sleep(0.05)

        remover = threading.Thread(target=remove_worker_mid_h100_task)
        remover.start()
        out = tmp_path / "lost.csv"
        argv = ["run", str(suite), "--out", str(out), "--no-progress", "--executor", "ray"]
        try:
            code = main(argv + ["--address", cluster.address])
        finally:
            stop.set()
            remover.join()
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0 and "at" in removed
    err = capsys.readouterr().err
    assert f"attnbench: warning: Ray node {worker.node_id} (host " in err and "left the cluster" in err
    df = results.load(out, dedupe=False)
    assert not df.duplicated(list(results.ROW_KEY)).any()
    rows = df[(df.metric == "latency") & df.stat.isin(["median", "value"])]
    assert sorted(rows.case_id) == sorted(kind_of) and rows.case_id.is_unique  # every case exactly once
    h100 = rows[rows.case_id.map(kind_of) == "H100"]
    assert (h100.status == "ok").all()
    assert h100.worker.str.startswith(head[:12]).all()  # an H100 task that was on the worker ran again on the head
    a100 = rows[rows.case_id.map(kind_of) == "A100"]
    lost = a100[a100.status != "ok"]
    assert len(lost) >= 1 and (lost.status == "crash").all()
    for message in lost.message:
        assert f"lost with Ray node {worker.node_id}" in message and "hardware kind H100/A100" in message
        assert "no live node offers A100" in message and "--set 'hardware=[A100]'" in message
    assert a100[a100.status == "ok"].worker.str.startswith(worker.node_id[:12]).all()  # measured before it left


class FakeRay:
    """`ray.nodes()` of a cluster whose nodes the test changes."""

    def __init__(self, nodes: list[dict]):
        self.entries = nodes

    def nodes(self) -> list[dict]:
        return [dict(entry) for entry in self.entries]


def node(node_id: str, **resources: float) -> dict:
    return dict(
        NodeID=node_id,
        Alive=True,
        NodeManagerHostname=f"host-{node_id}",
        NodeManagerAddress="10.0.0.1",
        Resources=resources,
    )


def test_node_watch_names_a_lost_node_and_the_tasks_only_it_could_run(monkeypatch):
    monkeypatch.setattr(ray_cluster, "NODE_POLL_S", 0.0)
    head, worker = node("head", CPU=1.0, H100=1.0), node("wrk", CPU=3.0, H100=1.0, A100=1.0)
    fake = FakeRay([head, worker])
    watch = ray_cluster.NodeWatch(fake, {"H100": "H100", "A100": "A100"})
    a100, h100, big = {"CPU": 1, "GPU": 0, "A100": 0.001}, {"CPU": 1, "GPU": 0, "H100": 0.001}, {"CPU": 4}
    assert watch.poll() == [] and watch.stranded(a100) == ([], [])
    fake.entries = [head, dict(worker, Alive=False, Resources={})]  # as Ray lists a dead node
    with pytest.warns(UserWarning, match=r"Ray node wrk \(host host-wrk, 10\.0\.0\.1, hardware kind H100/A100\) left"):
        assert watch.poll() == ["wrk"]
    assert watch.poll() == []  # warned once
    assert watch.stranded(a100) == (["wrk"], ["A100"])
    assert watch.stranded(h100) == ([], [])  # the head runs it
    assert watch.stranded(big) == ([], [])  # no node ever had 4 CPUs: Ray queues it (an autoscaler may add one)
    fake.entries.append(node("new", CPU=1.0, A100=1.0))  # a replacement joins
    watch.poll()
    assert watch.stranded(a100) == ([], [])
