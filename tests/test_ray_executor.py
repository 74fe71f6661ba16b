"""`--executor ray` on a local Ray instance (2 CPUs, 2 declared fake GPUs, two fake hardware kinds): the
single-process case set, each case once, from several worker processes; per-task GPU placement; one copy
of each case per hardware kind; a killed Ray worker is retried; a killed driver resumes; a bad address is
one line. Skipped where Ray is not installed (CI installs the `distributed` extra)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from sleepy_suite import sleepy_suite  # noqa: E402

from attnbench import results  # noqa: E402
from attnbench.cli import main  # noqa: E402
from attnbench.executors.ray_cluster import RayExecutor  # noqa: E402
from attnbench.runner import run_suite  # noqa: E402
from attnbench.suite import load_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUITE = sleepy_suite("rayscale")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance for the module (start-up costs seconds): 2 CPUs, 2 fake GPUs, fake kinds."""
    pids = tmp_path_factory.mktemp("pids")
    os.environ["ATTNBENCH_TEST_PIDS"] = str(pids)  # inherited by the Ray workers started below
    ray.init(num_cpus=2, num_gpus=2, resources={"H100": 1, "A100": 1}, include_dashboard=False, log_to_driver=False)
    yield pids
    ray.shutdown()
    os.environ.pop("ATTNBENCH_TEST_PIDS", None)


def write_suite(tmp_path: Path, body: str = SUITE) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def latency_rows(path: Path):
    df = results.load(path, dedupe=False)
    return df[(df.metric == "latency") & df.stat.isin(["median", "value"])]


@pytest.mark.slow
def test_ray_gives_the_single_process_case_set(tmp_path, local_ray):
    body = SUITE.replace("resolution: [2, 3]", "resolution: 2").replace("softmax_sdpa]", "softmax_sdpa, softmax_flash]")
    suite = write_suite(tmp_path, body)  # softmax_flash: unavailable on CPU, a planned skip
    one, two = tmp_path / "one.csv", tmp_path / "ray.csv"
    assert main(["run", str(suite), "--out", str(one), "--no-progress", "--set", "isolation=inprocess"]) == 0
    assert main(["run", str(suite), "--out", str(two), "--no-progress", "--executor", "ray"]) == 0
    a, b = latency_rows(one), latency_rows(two)
    assert sorted(a.case_id) == sorted(b.case_id) and b.case_id.is_unique and len(b) == 6
    skipped = b[b.mechanism == "softmax_flash"]
    assert (skipped.status == "skipped").all() and skipped.worker.str.endswith(f"/pid{os.getpid()}").all()
    b = b[b.mechanism != "softmax_flash"]  # made by the driver, no Ray task started for them
    assert (b.status == "ok").all() and b.worker.nunique() > 1
    assert not results.load(two, dedupe=False).duplicated(list(results.ROW_KEY)).any()
    envs = json.loads(results.companion(two, "env.json").read_text())
    assert {fp.get("executor") for fp in envs.values()} >= {"ray"} and set(b.env_id) <= set(envs)
    samples = results.load_samples(two)
    assert (samples.groupby("case_id")["round"].nunique() == 2).all()


@pytest.mark.slow
def test_gpu_placement_gives_each_task_its_own_device(tmp_path, local_ray):
    suite = load_suite(write_suite(tmp_path), ["rounds=1", "mechanisms=[softmax_sdpa]"])
    out = tmp_path / "gpu.csv"
    run_suite(suite, out, executor=RayExecutor(gpus_per_task=1))
    envs = json.loads(results.companion(out, "env.json").read_text())
    seen = [fp["cuda_visible_devices"] for fp in envs.values() if fp.get("executor") == "ray"]
    assert set(seen) <= {"0", "1"} and len(set(seen)) == 2  # one fake GPU per task, both used
    assert len(latency_rows(out)) == 4


@pytest.mark.slow
def test_every_case_once_per_hardware_kind(tmp_path, local_ray, capsys):
    one_unit = (
        SUITE.replace("rounds: 2", "rounds: 1\n    hardware: [H100, A100]")
        .replace("[test_sleepy, softmax_sdpa]", "[softmax_sdpa]")
        .replace("resolution: [2, 3]", "resolution: 2")
    )
    suite = write_suite(tmp_path, one_unit)
    out = tmp_path / "hw.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--executor", "ray"]) == 0
    rows = latency_rows(out)
    assert len(rows) == 4 and rows.case_id.is_unique
    envs = json.loads(results.companion(out, "env.json").read_text())
    kinds = rows.env_id.map(lambda e: envs[e].get("hardware_kind"))
    assert kinds.value_counts().to_dict() == {"H100": 2, "A100": 2}
    bad = write_suite(tmp_path, SUITE.replace("rounds: 2", "hardware: [B200]"))
    assert main(["run", str(bad), "--out", str(tmp_path / "b.csv"), "--no-progress", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "'B200' is not in the Ray cluster" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.csv").exists()


@pytest.mark.slow
def test_killed_ray_worker_is_retried(tmp_path, local_ray):
    for stale in local_ray.iterdir():
        stale.unlink()
    body = SUITE.replace("min: 3, max: 3", "min: 40, max: 40").replace("softmax_sdpa", "test_sleepy")
    suite = load_suite(write_suite(tmp_path, body), ["rounds=1", "resolution=[2]"])
    out = tmp_path / "kill.csv"
    import threading

    def kill_first_worker():
        deadline = time.time() + 120
        while time.time() < deadline and not any(local_ray.iterdir()):
            time.sleep(0.05)
        for mark in local_ray.iterdir():
            os.kill(int(mark.name), signal.SIGKILL)
            return

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    run_suite(suite, out, executor=RayExecutor())
    killer.join()
    rows = latency_rows(out)
    assert len(rows) == 2 and rows.case_id.is_unique and (rows.status == "ok").all()  # retried, not lost


@pytest.mark.slow
def test_driver_sigkill_then_resume_with_ray(tmp_path):
    body = (
        SUITE.replace("min: 3, max: 3", "min: 20, max: 20")
        .replace("softmax_sdpa", "test_sleepy")
        .replace("resolution: [2, 3]", "resolution: 2")
    )  # one unit, two rounds: killed after round 1, resumed for round 2
    suite = write_suite(tmp_path, body)
    out = tmp_path / "d.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ATTNBENCH_TEST_PIDS", None)
    cmd = [
        sys.executable,
        "-m",
        "attnbench",
        "run",
        str(suite),
        "--out",
        str(out),
        "--no-progress",
        "--executor",
        "ray",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    samples = results.companion(out, "samples.csv")
    deadline = time.time() + 240
    while time.time() < deadline and not (samples.exists() and samples.read_text().count("\n") > 20):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray instance it started
    proc.wait()
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    rows = latency_rows(out)
    assert len(rows) == 2 and rows.case_id.is_unique and (rows.status == "ok").all()
    assert sorted(set(results.load_samples(out)["round"])) == [0, 1]


def test_bad_address_is_one_line(tmp_path, capsys):
    suite = write_suite(tmp_path)
    t0 = time.perf_counter()
    code = main(
        [
            "run",
            str(suite),
            "--out",
            str(tmp_path / "a.csv"),
            "--no-progress",
            "--executor",
            "ray",
            "--address",
            "127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no Ray cluster answers there" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 30
