"""Faults as rows: process isolation, timeouts, memory limits, OOM prediction, verify, SIGKILL + resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from attnbench import results
from attnbench.cli import main

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "faulty.py"


def write_suite(tmp_path: Path, body: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def case_status(df):
    rows = df[df.metric.eq("latency") & df.stat.isin(["median", "value"])]
    return rows


def run_quick_inprocess(tmp_path: Path, name: str, exit_code: int = 0, **keys):
    """Run suite `name`: an op sweep on the CPU, in-process, with the fault plugin loaded, no warmup and 2 repeats,
    plus the suite keys `keys`; the run must exit with `exit_code`. Its rows."""
    body = {"name": name, "plugins": [str(PLUGIN)], "level": "op", "device": "cpu", "isolation": "inprocess"}
    quick = {"warmup": 0, "warmup_s": 0, "repeats": {"min": 2, "max": 2, "min_time_s": 0}}
    suite = write_suite(tmp_path, yaml.safe_dump({**body, **quick, **keys}, sort_keys=False))
    out = tmp_path / f"{name}.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == exit_code
    return results.load(out)


@pytest.mark.slow
def test_fault_injected_sweep_in_workers(tmp_path):
    suite = write_suite(
        tmp_path,
        f"""\
        name: faults
        plugins: [{PLUGIN}]
        mechanisms: [softmax_eager, test_abort, test_segfault, test_hang, test_oom, test_unbounded, softmax_sdpa]
        level: op
        dim: 16
        heads: 1
        resolution: [4]
        batch: [1, 2]
        device: cpu
        isolation: process
        memory_limit_gb: 4
        timeout_s: 5
        rounds: 2
        warmup: 0
        warmup_s: 0
        verify: false
        repeats: {{min: 2, max: 2, min_time_s: 0}}
        metrics: [latency]
        """,
    )
    out = tmp_path / "faults.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    rows = case_status(results.load(out))
    by = {(r.mechanism, r.batch): (r.status, r.message) for r in rows.itertuples()}
    assert len(rows) == 14
    for mech in ("softmax_eager", "softmax_sdpa"):
        assert by[(mech, 1)][0] == by[(mech, 2)][0] == "ok"
    assert by[("test_abort", 1)][0] == "crash" and "SIGABRT" in by[("test_abort", 1)][1]
    assert by[("test_segfault", 1)][0] == "crash" and "SIGSEGV" in by[("test_segfault", 1)][1]
    assert by[("test_hang", 1)][0] == "timeout"
    assert by[("test_oom", 1)][0] == "oom"
    assert by[("test_unbounded", 1)][0] == "oom"
    # after an OOM at batch 1, batch 2 of the same mechanism and shape is predicted, not run
    for mech in ("test_oom", "test_unbounded"):
        status, message = by[(mech, 2)]
        assert status == "skipped" and message.startswith("oom_predicted")
    ok = results.load(out).query("mechanism == 'softmax_eager' and metric == 'latency' and stat == 'median'")
    assert (ok["value"] > 0).all()


def test_verify_catches_wrong_mechanism(tmp_path):
    # every case of test_wrong fails verification: its rows are written and the run exits 2 (a user error)
    df = run_quick_inprocess(
        tmp_path, "verify", exit_code=2, mechanisms=["test_wrong", "softmax_sdpa"], dim=32, heads=2, resolution=5
    )
    wrong = df[df.mechanism == "test_wrong"]
    status = case_status(wrong)
    assert status.status.item() == "error" and "verify failed: rel_err" in status.message.item()
    err = wrong[wrong.metric == "rel_err"]
    assert err.value.item() > 1e-2 and err.status.item() == "error"
    good = df[(df.mechanism == "softmax_sdpa") & (df.metric == "rel_err")]
    assert good.status.item() == "ok" and good.value.item() < 1e-5


def test_inprocess_timeout_and_error_rows(tmp_path):
    df = run_quick_inprocess(
        tmp_path, "t", mechanisms=["test_raises", "test_oom", "softmax_eager"], dim=16, resolution=3, verify=False
    )
    st = {r.mechanism: r.status for r in case_status(df).itertuples()}
    assert st == {"test_raises": "error", "test_oom": "oom", "softmax_eager": "ok"}


def test_pruned_cases_become_skipped_rows(tmp_path):
    suite = write_suite(
        tmp_path,
        """\
        name: prune
        mechanisms: [softmax_sdpa]
        level: op
        dim: 64
        heads: 1
        resolution: [4, 8192]
        batch: 64
        device: cpu
        memory_limit_gb: 1
        rounds: 2
        warmup: 0
        warmup_s: 0
        repeats: {min: 1, max: 1, min_time_s: 0}
        """,
    )
    out = tmp_path / "p.csv"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--set", "verify=false"]) == 0
    rows = case_status(results.load(out))
    big = rows[rows.height == 8192]
    assert big.status.item() == "skipped" and big.message.item().startswith("pruned: predicted")
    assert rows[rows.height == 4].status.item() == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("n_rounds", [1, 3])
def test_sigkill_then_resume_each_case_once(tmp_path, n_rounds):
    """SIGKILL mid-sweep, then --resume: every case exactly once. With rounds, the kill lands in round 2 and the
    resumed run re-measures no round that was already in FILE.samples.csv (except the last, which writes rows)."""
    suite = write_suite(
        tmp_path,
        f"""\
        name: kill
        mechanisms: [softmax_eager, softmax_sdpa, rala_eager]
        level: [op, mixer]
        dim: 16
        heads: 1
        resolution: [2, 3, 4, 5, 6, 7, 8]
        device: cpu
        isolation: inprocess
        rounds: {n_rounds}
        verify: false
        warmup: 0
        warmup_s: 0
        repeats: {{min: 30, max: 30, min_time_s: 0}}
        metrics: [latency]
        """,
    )
    out = tmp_path / "kill.csv"
    watched = out if n_rounds == 1 else results.companion(out, "samples.csv")
    # rows mid-sweep, or samples mid round 2 (a visit writes 30 latency, 30 preempted and 1 retries line)
    mark = 60 if n_rounds == 1 else int(42 * 61 * 1.5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "attnbench", "run", str(suite), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if watched.exists() and watched.read_text().count("\n") > mark:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if n_rounds == 1:
        n_partial = results.load(out).case_id.nunique()
        assert 0 < n_partial < 42, "the kill should land mid-sweep"
    else:
        before = results.load_samples(out)
        assert 42 < len(before.groupby(["case_id", "round"])) < 84, "the kill should land in round 2"
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = case_status(results.load(out, dedupe=False))
    assert len(rows) == 42 and rows.case_id.is_unique
    assert (rows.status == "ok").all()
    if n_rounds > 1:
        after = results.load_samples(out)
        after = after[after.metric == "latency"]
        blocks = after[after.rep == 0].groupby(["case_id", "round"]).size()
        assert set(after["round"]) == {0, 1, 2} and len(blocks) == 42 * 3
        kept = blocks.loc[[k for k in blocks.index if k[1] < 2]]
        assert (kept == 1).all()  # rounds 0 and 1 measured once, across the kill


def test_prediction_counts_materialised_scores(tmp_path):
    """softmax_eager's N x N scores count toward the predicted memory; SDPA's minimum traffic does not
    include them, so at the same shape only the eager case is pruned."""
    from attnbench.plan import plan
    from attnbench.predict import predicted_bytes, prune_reason
    from attnbench.suite import load_suite

    suite = write_suite(
        tmp_path,
        """\
        name: prune2
        mechanisms: [softmax_eager, softmax_sdpa]
        level: op
        dim: 64
        heads: 1
        resolution: 128
        batch: 1
        device: cpu
        memory_limit_gb: 1
        """,
    )
    eager, sdpa = plan(load_suite(suite))
    n = 128 * 128
    assert predicted_bytes(eager) == 4 * n * 64 * 4 + 2 * n * n * 4  # q, k, v, out + scores and probabilities
    assert prune_reason(eager, load_suite(suite)).startswith("pruned: predicted 2.0 GiB")
    assert prune_reason(sdpa, load_suite(suite)) is None
