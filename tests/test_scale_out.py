"""Scale-out on one node: `--workers N` gives exactly the cases of a single-process run, each once, from
several workers; a killed worker costs its case in flight; a killed driver resumes without duplicates;
user errors are one line. Scheduling and concurrency bookkeeping are checked as pure logic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sleepy_suite import SLEEPY, sleepy_suite

from attnbench import results, rounds
from attnbench.cli import main
from attnbench.executors.local import slot_settings
from attnbench.executors.schedule import Concurrency, RoundScheduler
from attnbench.plan import plan
from attnbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITE = sleepy_suite("scale")


def write_suite(tmp_path: Path, body: str = SUITE, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def latency_rows(path: Path):
    df = results.load(path, dedupe=False)
    return df[(df.metric == "latency") & df.stat.isin(["median", "value"])]


def test_scheduler_runs_each_unit_round_once_in_round_order(tmp_path):
    units = rounds.units(plan(load_suite(write_suite(tmp_path))))
    sched = RoundScheduler(units, 3, seed=1)
    finished: set[tuple[int, int]] = set()
    running = []
    while not sched.done:  # two workers; the older task finishes first
        while len(running) < 2 and (task := sched.next_ready()) is not None:
            assert task.round == 0 or (task.unit, task.round - 1) in finished, "round r before r-1 finished"
            assert all(t.unit != task.unit for t in running), "one unit on two workers"
            running.append(task)
        done = running.pop(0)
        finished.add((done.unit, done.round))
        sched.finish(done)
    assert finished == {(u, r) for u in range(len(units)) for r in range(3)}


def test_concurrency_is_the_most_cases_in_flight_during_a_case():
    c = Concurrency()
    a = c.enter()
    b = c.enter()
    assert c.enter(exclusive=True) is None  # exclusive: node waits while others run
    assert c.leave(b) == 2
    d = c.enter()
    assert c.leave(a) == 2 and c.leave(d) == 2
    e = c.enter(exclusive=True)
    assert e is not None and c.leave(e) == 1


def test_cpu_workers_split_the_cores():
    cores = os.cpu_count() or 1
    slots = slot_settings("cpu", 2, None)
    assert len(slots) == 2 and all(s["threads"] == max(1, cores // 2) for s in slots)
    assert [s["threads"] for s in slot_settings("cpu", 3, 4)] == [4, 4, 4]  # threads: set in the suite wins
    assert len(slot_settings("cpu", "auto", None)) == cores


def test_two_workers_give_the_single_process_case_set(tmp_path):
    suite = write_suite(tmp_path)
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert main(["run", str(suite), "--out", str(one), "--no-progress", "--set", "isolation=inprocess"]) == 0
    assert main(["run", str(suite), "--out", str(two), "--no-progress", "--workers", "2", "--set", "sweeps=2"]) == 0
    a, b = latency_rows(one), latency_rows(two)
    assert sorted(a.case_id) == sorted(b.case_id) and b.case_id.is_unique and len(b) == 8
    assert (b.status == "ok").all() and b.worker.nunique() > 1
    full = results.load(two, dedupe=False)
    assert not full.duplicated(list(results.ROW_KEY)).any()
    assert set(full.concurrent.dropna()) <= {1, 2}
    samples = results.load_samples(two)
    assert (samples.groupby("case_id")["round"].agg(lambda r: sorted(set(r))).map(tuple) == (0, 1)).all()
    visits = samples.groupby(["case_id", "round"])["sweep"].agg(lambda s: tuple(sorted(set(s))))
    assert (visits == (0, 1)).all()  # a pool task runs its case's sweeps (back to back)
    # the rounds' note; a loaded machine may add its `contended` part (attnbench.contention), which is not asserted
    assert {n.split("; contended")[0] for n in b.note} == {"over 2 round values (each the fastest of 2 sweep medians)"}
    import json

    envs = json.loads(results.companion(two, "env.json").read_text())
    workers = [fp for fp in envs.values() if fp.get("executor") == "local"]
    assert workers and all(fp["workers"] == 2 for fp in workers)
    assert set(b.env_id) <= set(envs)


def _run_cli(argv: list[str], pids: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if pids is not None:
        env["ATTNBENCH_TEST_PIDS"] = str(pids)
    cmd = [sys.executable, "-m", "attnbench", *argv, "--no-progress"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


SLOW = f"""\
    name: slow
    plugins: [{SLEEPY}]
    mechanisms: [test_sleepy]
    level: op
    dim: 16
    resolution: [2, 3, 4, 5, 6, 7]
    batch: [1, 2]
    device: cpu
    warmup: 0
    warmup_s: 0
    verify: false
    metrics: [latency]
    repeats: {{min: 15, max: 15, min_time_s: 0}}
    rounds: 2
    """


@pytest.mark.slow
def test_killed_worker_costs_its_case_and_the_sweep_completes(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "k.csv"
    proc = _run_cli(["run", str(write_suite(tmp_path, SLOW)), "--out", str(out), "--workers", "2"], pids)
    _wait_for(lambda: any(pids.iterdir()))
    victim = int(next(pids.iterdir()).name)
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    rows = latency_rows(out)
    assert len(rows) == 12 and rows.case_id.is_unique
    lost = rows[rows.status != "ok"]  # the case in flight (SIGKILL reads as the OOM killer) and, predicted
    assert len(lost) <= 2 and lost.message.str.contains("SIGKILL|oom_predicted").all()  # from it, its next batch
    assert (rows.status == "ok").sum() >= 10


@pytest.mark.slow
def test_driver_sigkill_then_resume_with_workers_each_case_once(tmp_path):
    out = tmp_path / "d.csv"
    suite = write_suite(tmp_path, SLOW)
    argv = ["run", str(suite), "--out", str(out), "--workers", "2"]
    proc = _run_cli(argv)
    _wait_for(
        lambda: (
            results.companion(out, "samples.csv").exists()
            and results.companion(out, "samples.csv").read_text().count("\n") > 40
        )
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    again = _run_cli(argv + ["--resume"])
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    rows = latency_rows(out)
    assert len(rows) == 12 and rows.case_id.is_unique and (rows.status == "ok").all()
    samples = results.load_samples(out)
    assert set(samples["round"]) == {0, 1}


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--workers", "0"], "positive number of workers"),
        (["--workers", "many"], "positive number of workers"),
        (["--address", "127.0.0.1:9"], "use it with --executor ray"),
        (["--executor", "ray", "--workers", "2"], "--workers is for the local pool"),
        (["--set", "hardware=[H100]"], "run it with --executor ray"),
        (["--set", "exclusive=socket"], "exclusive"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, pattern):
    suite = write_suite(tmp_path)
    assert main(["run", str(suite), "--out", str(tmp_path / "e.csv"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("attnbench: error:") == 1 and "Traceback" not in err


def test_missing_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    suite = write_suite(tmp_path)
    assert main(["run", str(suite), "--out", str(tmp_path / "e.csv"), "--no-progress", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "attnbench[distributed]" in err and len(err.strip().splitlines()) == 1


def test_exclusive_node_runs_one_case_at_a_time(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("rounds: 2", "rounds: 1\n    exclusive: node"))
    out = tmp_path / "x.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--workers", "2"]) == 0
    rows = results.load(out)
    assert (rows.concurrent == 1).all() and len(latency_rows(out)) == 8


def _gate_run(path: Path, gpu: str, env_id: str) -> Path:
    writer = results.ResultsWriter(path)
    writer.write_env(env_id, {"device": "cuda", "gpu_name": gpu})
    row = {c: "" for c in results.COLUMNS} | {
        "schema_version": 2,
        "case_id": "c1",
        "metric": "latency",
        "stat": "median",
        "value": 1.0,
        "unit": "ms",
        "status": "ok",
        "source": "measured",
        "env_id": env_id,
    }
    writer.write_rows([row])
    for r in range(3):
        writer.write_samples("c1", "latency", [1.0 + 0.01 * r, 1.01, 0.99], round=r)
    writer.close()
    return path


def test_gate_refuses_different_hardware_unless_asked(tmp_path, capsys):
    a = _gate_run(tmp_path / "a.csv", "NVIDIA H100", "e1")
    b = _gate_run(tmp_path / "b.csv", "NVIDIA A100", "e2")
    assert main(["gate", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "--across-hardware" in err and len(err.strip().splitlines()) == 1
    assert main(["gate", str(a), str(b), "--across-hardware"]) == 0
    assert main(["gate", str(a), str(_gate_run(tmp_path / "c.csv", "NVIDIA H100", "e3"))]) == 0


def test_slurm_script_dry_run_starts_ray_then_the_sweep(tmp_path):
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "SLURM_JOB_NODELIST": "gpu01,gpu02,gpu03",
        "HARDWARE": "H100",
        "PATH": "/usr/bin:/bin",
    }  # no scontrol on PATH: the dry run reads the node list itself
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm_ray.sbatch"), "suites/resolution.yaml", "--set", "dtype=bf16"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = [i for i, line in enumerate(lines) if "ray start --head" in line]
    workers = [i for i, line in enumerate(lines) if "ray start --address=gpu01:6379" in line]
    sweep = [i for i, line in enumerate(lines) if "-m attnbench run suites/resolution.yaml --executor ray" in line]
    assert len(head) == 1 and len(workers) == 2 and len(sweep) == 1 and head[0] < workers[0] < sweep[0]
    assert '{"H100": 8}' in lines[head[0]] and "--address gpu01:6379" in lines[sweep[0]]
    assert lines[sweep[0]].endswith("--set dtype=bf16")


def test_schema_1_files_still_load_and_are_not_appended_to(tmp_path, capsys):
    old = tmp_path / "v1.csv"
    row = [
        "1",
        "r",
        "c1",
        "s",
        "m",
        "f",
        "b",
        "op",
        "",
        "fwd",
        "cpu",
        "fp32",
        "1",
        "2",
        "2",
        "4",
        "1",
        "16",
        "16",
        "latency",
        "1.5",
        "ms",
        "median",
        "ok",
        "",
        "measured",
        "",
        "e",
        "t",
    ]
    old.write_text(",".join(results.COLUMNS_V1) + "\n" + ",".join(row) + "\n")
    df = results.load(old)
    assert list(df.columns) == results.COLUMNS and df.worker.tolist() == [""] and df.concurrent.isna().all()
    assert df.value.tolist() == [1.5] and results.done_case_ids(old) == {"c1"}
    with pytest.raises(results.ResultsError, match="schema 1"):
        results.ResultsWriter(old)
