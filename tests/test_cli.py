"""End to end through the CLI: files and schema, faults as rows, interrupt + resume, user errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from attnbench import results
from attnbench.cli import main
from attnbench.gate import gate
from attnbench.plan import plan
from attnbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "faulty.py"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, cwd=REPO, env=full_env, timeout=300
    )


def write_suite(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.slow
def test_smoke_suite_writes_four_files_with_schema(tmp_path):
    out = tmp_path / "smoke.csv"
    proc = run_cli(
        "run", "suites/smoke.yaml", "--out", str(out), "--no-progress", "--set", "device=cpu", "--rounds", "2"
    )
    assert proc.returncode == 0, proc.stderr
    assert "latency ms" in proc.stdout and "cases:" in proc.stdout
    for kind in ("env.json", "suite.yaml", "samples.csv"):
        assert results.companion(out, kind).exists(), kind
    df = results.load(out)
    assert list(df.columns) == results.COLUMNS
    assert set(df["status"]) <= set(results.STATUSES) and "ok" in set(df["status"])
    assert df["value"].dtype == "float64" and str(df["batch"].dtype) == "Int64"
    assert (df["schema_version"] == 2).all()
    assert df["worker"].str.len().gt(0).all() and (df["concurrent"] == 1).all()
    ok_lat = df[(df.metric == "latency") & (df.stat == "median") & (df.status == "ok")]
    assert (ok_lat["value"] > 0).all() and set(ok_lat["unit"]) == {"ms"}
    flash = df[df.mechanism == "softmax_flash"]
    assert (flash.status == "skipped").all() and flash.message.str.contains("flash").all()
    envs = json.loads(results.companion(out, "env.json").read_text())
    assert set(df["env_id"]) == set(envs) and "torch" in next(iter(envs.values()))["versions"]
    samples = results.load_samples(out)
    assert set(samples["case_id"]) == set(ok_lat["case_id"])
    # the resolved suite reloads to the same plan
    again = load_suite(results.companion(out, "suite.yaml"))
    # the same cases (rows arrive in the last round's shuffled order, attnbench.rounds)
    assert sorted(c.case_id for c in plan(again)) == sorted(dict.fromkeys(df["case_id"]))
    # report prints the same tables from the saved file
    rep = run_cli("report", str(out))
    assert rep.returncode == 0 and "latency ms" in rep.stdout


def test_faults_become_rows_and_interrupt_resumes_exactly_once(tmp_path):
    suite = write_suite(
        tmp_path,
        f"""\
        name: faults
        plugins: [{PLUGIN}]
        mechanisms: [softmax_eager, test_raises, test_interrupt, softmax_sdpa]
        level: op
        dim: 16
        heads: 1
        resolution: [2, 3, 4]
        device: cpu
        rounds: 1  # in-process: the plugin's KeyboardInterrupt reaches the runner as a Ctrl-C would
        warmup: 0
        warmup_s: 0
        repeats: {{min: 2, max: 2, min_time_s: 0}}
        metrics: [latency]
        """,
    )
    out = tmp_path / "faults.csv"
    marker = tmp_path / "interrupt-now"
    marker.write_text("x")
    env = {"ATTNBENCH_TEST_INTERRUPT": str(marker)}
    first = run_cli("run", str(suite), "--out", str(out), "--no-progress", env=env)
    assert first.returncode == 130, first.stderr
    assert "--resume" in first.stderr and "Traceback" not in first.stderr
    partial = results.load(out)
    assert 0 < partial["case_id"].nunique() < 12
    second = run_cli(
        "run", str(suite), "--out", str(out), "--resume", "--no-progress", env={"ATTNBENCH_TEST_INTERRUPT": str(marker)}
    )
    assert second.returncode == 0, second.stderr
    df = results.load(out, dedupe=False)
    status_rows = df[(df.metric == "latency") & (df.stat.isin(["median", "value"]))]
    assert len(status_rows) == 12 and status_rows["case_id"].is_unique  # every case exactly once
    errors = status_rows[status_rows.mechanism == "test_raises"]
    assert (errors.status == "error").all() and errors.message.str.contains("deliberate failure").all()
    assert (status_rows[status_rows.mechanism != "test_raises"].status == "ok").all()


def test_cpu_peak_memory_is_per_case(tmp_path):
    """A 100 MiB case right after a 400 MiB one must report ~100 MiB, not the process high-water mark."""
    suite = write_suite(
        tmp_path,
        f"""\
        name: mem
        plugins: [{PLUGIN}]
        mechanisms: [test_alloc]
        level: mixer
        dim: 8
        heads: 2
        resolution: 2
        device: cpu
        warmup: 0
        warmup_s: 0
        repeats: {{min: 1, max: 1, min_time_s: 0}}
        metrics: [memory]
        """,
    )
    out_big, out = tmp_path / "big.csv", tmp_path / "small.csv"
    for path, mb in ((out_big, 400), (out, 100)):
        opts = f"options={{test_alloc: {{mb: {mb}}}}}"
        assert main(["run", str(suite), "--out", str(path), "--no-progress", "--set", opts]) == 0
    big = results.load(out_big).query("metric == 'peak_memory'")["value"].item()
    small = results.load(out).query("metric == 'peak_memory'")
    assert small["note"].item() == "cpu_profiler_allocated"
    assert abs(big / 2**20 - 400) < 5
    assert abs(small["value"].item() / 2**20 - 100) < 5


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["run", "suites/nope.yaml"], "suite file not found"),
        (["run", "suites/smoke.yaml", "--set", "mechanisms=[nonexistent]"], "unknown mechanism 'nonexistent'"),
        (["report", "does-not-exist.csv"], "not found"),
        (["list", "--family", "nofamily"], "no mechanisms in family"),
        (["run", "suites/smoke.yaml", "--resume"], "--resume needs --out"),
    ],
)
def test_user_errors_exit_2_one_line(args, pattern):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert pattern in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_existing_out_needs_resume(tmp_path, capsys):
    out = tmp_path / "x.csv"
    out.write_text(",".join(results.COLUMNS) + "\n")
    row = "1,r,c,s,m,f,b,op,,fwd,cpu,fp32,1,1,1,1,1,4,4,latency,1.0,ms,median,ok,,measured,,e,t\n"
    out.write_text(out.read_text() + row)
    assert main(["run", "suites/smoke.yaml", "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_list_shows_reasons():
    """On CPU the softmax family has 4 usable registrations (eager, sdpa, sdpa_math, flex); the others are CUDA-only
    by design (mechanisms/softmax/sdpa.py, external.py), and each says why in its row."""
    proc = run_cli("list", "--device", "cpu", "--family", "softmax")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(re.sub(r"[\u2500-\u257f|]", " ", proc.stdout).split())  # cells, wrapped reasons re-joined
    assert "4 of 9 available on cpu" in text
    rows = re.split(r" (?=softmax_\w+ softmax )", text)
    reason = {row.split()[0]: row for row in rows if row.startswith("softmax_")}
    for usable in ("softmax_eager", "softmax_sdpa", "softmax_sdpa_math", "softmax_flex"):
        assert reason[usable].rstrip().endswith("yes"), reason[usable]
    assert (
        "no: SDPA efficient backend needs CUDA (this is cpu): PyTorch has no CPU kernel for the "
        "memory-efficient backend" in reason["softmax_sdpa_efficient"]
    )
    assert (
        "no: SDPA cudnn backend needs CUDA (this is cpu): cuDNN attention is a CUDA library"
        in reason["softmax_sdpa_cudnn"]
    )
    assert "no:" in reason["softmax_flash"] and "CUDA" in reason["softmax_flash"]


def test_torn_last_line_is_dropped_with_warning(tmp_path):
    out = tmp_path / "torn.csv"
    w = results.ResultsWriter(out)
    row = {c: "" for c in results.COLUMNS} | {
        "case_id": "a",
        "metric": "latency",
        "value": 1.5,
        "stat": "median",
        "status": "ok",
        "schema_version": 1,
    }
    w.write_rows([row])
    w.close()
    with open(out, "a") as fh:
        fh.write("1,run,b,suite,mech")  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn"):
        df = results.load(out)
    assert list(df["case_id"]) == ["a"]
    with pytest.warns(UserWarning, match="torn"):
        w2 = results.ResultsWriter(out)  # appending repairs the tail first
    w2.write_rows([row | {"case_id": "c"}])
    w2.close()
    assert list(pd.read_csv(out)["case_id"]) == ["a", "c"]


def test_fraction_rows_use_cached_peaks(tmp_path, monkeypatch):
    """With peaks cached for this environment, rows gain frac_bandwidth = achieved_gbps / copy GB/s."""
    from attnbench.execute import prepare_process
    from attnbench.measure import peaks
    from attnbench.suite import load_suite

    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    # the run's own fingerprint (smoke.yaml's threads: 1, the precision settings), not this process's state,
    # which depends on the tests that ran before in it
    fp = prepare_process(load_suite(REPO / "suites" / "smoke.yaml")).fingerprint
    peaks.save_peaks(
        {
            "schema_version": peaks.SCHEMA_VERSION,
            "fingerprint": fp,
            "key": peaks.peaks_key(fp),
            "copy": {"value": 10.0, "unit": "GB/s"},
            "matmul": {"fp32": {"value": 0.5, "unit": "TFLOP/s"}},
        }
    )
    out = tmp_path / "f.csv"
    assert (
        main(
            [
                "run",
                "suites/smoke.yaml",
                "--out",
                str(out),
                "--no-progress",
                "--set",
                "device=cpu",
                "--rounds",
                "1",
                "--set",
                "mechanisms=[softmax_sdpa]",
                "--set",
                "level=op",
                "--set",
                "pass=fwd",
            ]
        )
        == 0
    )
    df = results.load(out)
    for _, rows in df.groupby("case_id"):
        value = dict(zip(rows.metric, rows.value))
        assert value["frac_bandwidth"] == pytest.approx(value["achieved_gbps"] / 10.0)
        assert value["frac_flops"] == pytest.approx(value["achieved_tflops"] / 0.5)


@pytest.mark.slow
def test_gate_fails_a_deliberately_slowed_mechanism(tmp_path, monkeypatch):
    """Baseline vs a run where one mechanism does 5x the work (real compute): gate exits 1 naming it;
    the baseline against itself passes (exit 0). Both runs have 4 rounds, each in a fresh worker. A side whose rows
    are marked contended (a loaded machine) is measured again, up to twice; if it stays contended the gate must
    refuse to judge those cases (verdict unsteady, exit 0) rather than pass or fail them."""
    suite = write_suite(
        tmp_path,
        f"""\
        name: gate
        plugins: [{REPO / "tests" / "plugins" / "slowable.py"}]
        mechanisms: [test_slowable]
        level: op
        dim: 16
        resolution: [4, 6]
        device: cpu
        verify: false
        warmup: 1
        repeats: {{min: 20, max: 20, min_time_s: 0}}
        rounds: 4
        metrics: [latency]
        """,
    )

    def measure(name, slowdown):  # -> (results file, steady)
        monkeypatch.setenv("ATTNBENCH_TEST_SLOWDOWN", slowdown)
        for attempt in range(3):
            out = tmp_path / f"{name}{attempt}.csv"
            assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
            if not results.load(out).note.str.contains("contended", na=False).any():
                return out, True
        return out, False

    (base, base_steady), (slow, slow_steady) = measure("base", "0"), measure("slow", "4.0")
    code = main(["gate", str(base), str(slow), "--threshold", "10%"])
    verdicts = {c.verdict for c in gate([base], [slow], threshold=0.10).cases}
    if base_steady and slow_steady:
        assert code == 1 and verdicts == {"regression"}
    else:  # the contended cases are not judged; any other case must still be caught
        assert "unsteady" in verdicts and verdicts <= {"unsteady", "regression"}
        assert code == (1 if "regression" in verdicts else 0)
    assert main(["gate", str(base), str(base)]) == 0
    assert main(["gate", str(base), str(tmp_path / "missing.csv")]) == 2


def test_shell_options_reach_mixer_costs(tmp_path):
    """`options: {rala_eager: {gate: false}}` builds a 3C qkvo and the analytic FLOPs follow it
    (equal to FlopCounterMode's count), instead of failing or ignoring the option."""
    out = tmp_path / "opts.csv"
    assert (
        main(
            [
                "run",
                "suites/smoke.yaml",
                "--out",
                str(out),
                "--no-progress",
                "--set",
                "device=cpu",
                "--rounds",
                "1",
                "--set",
                "mechanisms=[rala_eager]",
                "--set",
                "level=mixer",
                "--set",
                "pass=fwd",
                "--set",
                "options={rala_eager: {gate: false}}",
            ]
        )
        == 0
    )
    df = results.load(out)
    assert (df.status == "ok").all()
    for _, rows in df.groupby("case_id"):
        value = dict(zip(rows.metric, rows.value))
        assert value["flops"] == value["flops_counted"]
        c, n = 64, int(rows.tokens.iloc[0])
        assert value["flops"] == 2 * n * (3 * c * c + c * c + 25 * c) + 2 * n * (2 * 64 * 64 + 2 * 64)


@pytest.mark.parametrize(
    "setup,args,pattern",
    [
        ("suite_int_key", ["run", "{tmp}/s.yaml"], "keys must be names"),
        ("suite_binary", ["run", "{tmp}/s.yaml"], "not UTF-8 text"),
        ("csv_binary", ["report", "{tmp}/b.csv"], "is not an attnbench results file"),
        ("none", ["run", "suites/smoke.yaml", "--out", "/proc/attnbench/x.csv"], "cannot write results"),
        ("none", ["run", "suites/smoke.yaml", "--out", "{tmp}"], "is a directory"),
        ("none", ["run", "suites/smoke.yaml", "--set", "options={rala_eager: {foo: 1}}"], "takes no option(s) ['foo']"),
        ("none", ["compare", "{smoke}", "{smoke}", "--metric", "nope"], "has no 'nope' rows"),
    ],
)
def test_more_user_errors_are_one_line(tmp_path, capsys, setup, args, pattern):
    if setup == "suite_int_key":
        (tmp_path / "s.yaml").write_text("name: x\nmechanisms: [softmax_eager]\nresolution: 4\n1: 2\n")
    elif setup == "suite_binary":
        (tmp_path / "s.yaml").write_bytes(b"\xff\xfe garbage")
    elif setup == "csv_binary":
        (tmp_path / "b.csv").write_bytes(b"\xff\xfe garbage")
    smoke = tmp_path / "smoke.csv"
    if "{smoke}" in args:
        assert (
            main(
                [
                    "run",
                    "suites/smoke.yaml",
                    "--out",
                    str(smoke),
                    "--no-progress",
                    "--set",
                    "device=cpu",
                    "--rounds",
                    "1",
                    "--set",
                    "mechanisms=[softmax_sdpa]",
                    "--set",
                    "level=op",
                    "--set",
                    "pass=fwd",
                ]
            )
            == 0
        )
        capsys.readouterr()
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{smoke}", str(smoke)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert pattern in err and len(err.strip().splitlines()) == 1, err


def test_resume_refuses_a_different_suite(tmp_path, capsys):
    out = tmp_path / "r.csv"
    base = [
        "run",
        "suites/smoke.yaml",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "device=cpu",
        "--rounds",
        "1",
        "--set",
        "mechanisms=[softmax_sdpa]",
        "--set",
        "level=op",
        "--set",
        "pass=fwd",
    ]
    assert main(base) == 0
    assert main(base + ["--resume"]) == 0  # same settings: nothing left to run
    assert main(base + ["--resume", "--set", "profile=true", "--set", "timeout_s=30"]) == 0  # rows unchanged
    assert main(base + ["--resume", "--set", "batch=[2]"]) == 2
    assert "different settings (batch)" in capsys.readouterr().err


def test_worker_that_cannot_start_becomes_a_row(tmp_path):
    """A memory limit too small for the worker to import torch: the case is a crash row, the run ends normally."""
    out = tmp_path / "w.csv"
    assert (
        main(
            [
                "run",
                "suites/smoke.yaml",
                "--out",
                str(out),
                "--no-progress",
                "--set",
                "device=cpu",
                "--set",
                "mechanisms=[softmax_sdpa]",
                "--set",
                "level=op",
                "--set",
                "pass=fwd",
                "--set",
                "resolution=[4]",
                "--set",
                "isolation=process",
                "--set",
                "memory_limit_gb=0.05",
            ]
        )
        == 0
    )
    rows = results.load(out)
    assert (rows.status == "crash").all() and rows.message.str.contains("worker").all()
