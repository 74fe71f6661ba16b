"""run --profile / suite key `profile`: Chrome traces, FILE.kernels.csv, report --kernels (one tiny case each)."""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

import attnbench
from attnbench import profiling, results
from attnbench.cli import main
from attnbench.errors import AttnbenchError
from attnbench.suite import load_suite

TINY = {
    "name": "tiny",
    "mechanisms": ["softmax_eager"],
    "level": "op",
    "resolution": [4],
    "rounds": 1,
    "warmup": 1,
    "repeats": {"min": 3, "max": 3, "min_time_s": 0.001},
    "metrics": ["latency"],
    "verify": False,
    "device": "cpu",
    "threads": 1,
}


def write_suite(tmp_path: Path, **keys) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **keys}))
    return path


def trace_pids(path: Path) -> set[int]:
    events = json.loads(path.read_text())["traceEvents"]
    return {int(e["pid"]) for e in events if e.get("cat") == "cpu_op"}


def test_run_profile_flag_writes_trace_and_kernels_and_report_lists_them(tmp_path, capsys):
    out = tmp_path / "run.csv"
    assert main(["run", str(write_suite(tmp_path)), "--out", str(out), "--profile", "--no-progress"]) == 0
    rows = results.load(out)
    (case_id,) = set(rows["case_id"])
    assert set(rows["status"]) == {"ok"} and rows["message"].eq("").all()
    # the trace: Chrome JSON with the case's ops, recorded in the process that timed the case (the rows' worker)
    trace = results.companion(out, "profiles") / f"{case_id}.json"
    data = json.loads(trace.read_text())
    names = {e.get("name") for e in data["traceEvents"]}
    assert {"aten::bmm", "aten::_softmax"} <= names
    worker_pid = int(rows["worker"].iloc[0].rsplit("/pid", 1)[1])
    assert trace_pids(trace) == {worker_pid} == {os.getpid()}  # inprocess: this process timed it
    # the kernels: real ops of softmax_eager, shares summing to 1, per call of the workload
    kernels = results.load_kernels(out)
    assert set(kernels["case_id"]) == {case_id} and set(kernels["device"]) == {"cpu"}
    assert {"aten::bmm", "aten::_softmax"} <= set(kernels["name"])
    assert math.isclose(kernels["share"].sum(), 1.0, abs_tol=1e-4)
    assert kernels.set_index("name").at["aten::bmm", "calls"] == 2  # q @ k^T and attn @ v, once per call
    assert (kernels["self_time_us"] > 0).all()
    capsys.readouterr()
    # report --kernels: the top N of the case, as a table, Markdown and CSV
    assert main(["report", str(out), "--kernels", "--top", "3"]) == 0
    term = capsys.readouterr().out
    top3 = kernels.sort_values("self_time_us", ascending=False)["name"].head(3).tolist()
    assert "softmax_eager op fwd" in term and all(name in term for name in top3)
    assert f"trace:{results.companion(out, 'profiles')}/{case_id}.json" in "".join(term.split())  # wrapped
    assert main(["report", str(out), "--kernels", "--top", "2", "--format", "csv"]) == 0
    tidy = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert tidy["name"].tolist() == top3[:2] and tidy["rank"].tolist() == [1, 2]
    assert main(["report", str(results.companion(out, "kernels.csv")), "--kernels", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("**top ops (CPU self time): softmax_eager") and "| aten::bmm |" in md


def test_suite_key_profile_in_a_worker_process(tmp_path):
    """The suite key (default off) turns profiling on; with process isolation the round's worker, which timed
    the case, profiles it."""
    assert load_suite(dict(TINY)).profile is False
    out = tmp_path / "api.csv"
    rows = attnbench.run({**TINY, "isolation": "process", "profile": True}, out=out)
    (case_id,) = set(rows["case_id"])
    worker_pid = int(rows["worker"].iloc[0].rsplit("/pid", 1)[1])
    assert worker_pid != os.getpid()
    assert trace_pids(results.companion(out, "profiles") / f"{case_id}.json") == {worker_pid}
    kernels = results.load_kernels(out)
    assert set(kernels["case_id"]) == {case_id} and {"aten::bmm", "aten::_softmax"} <= set(kernels["name"])
    assert yaml.safe_load(results.companion(out, "suite.yaml").read_text())["profile"] is True


def test_failing_profile_keeps_the_rows(tmp_path, monkeypatch, capsys):
    def broken(fn, device):
        raise RuntimeError("profiler unavailable")

    monkeypatch.setattr(profiling, "_run_profiler", broken)
    out = tmp_path / "broken.csv"
    assert main(["run", str(write_suite(tmp_path)), "--out", str(out), "--profile"]) == 0
    assert "note: softmax_eager op fwd" in capsys.readouterr().out  # said during the run, not an error
    rows = results.load(out)
    assert set(rows["status"]) == {"ok"}
    assert rows.query("metric == 'latency' and stat == 'median'")["value"].item() > 0
    message = rows.query("metric == 'latency' and stat == 'median'")["message"].item()
    assert message == "profile failed: RuntimeError: profiler unavailable"
    assert not results.companion(out, "kernels.csv").exists() and not results.companion(out, "profiles").exists()
    with pytest.raises(AttnbenchError, match="run --profile"):
        results.load_kernels(out)


def test_profiled_once_per_case_in_its_last_visit_only(tmp_path, monkeypatch):
    calls = []
    real = profiling.profile_workload

    def counted(fn, device):
        calls.append(device)
        return real(fn, device)

    monkeypatch.setattr(profiling, "profile_workload", counted)
    out = tmp_path / "visits.csv"
    keys = {**TINY, "rounds": 2, "sweeps": 2, "isolation": "inprocess", "profile": True}
    rows = attnbench.run(keys, out=out)
    assert calls == ["cpu"]  # 4 visits, one of them produced rows: profiled there
    assert results.load_samples(out)["round"].nunique() == 2 and set(rows["status"]) == {"ok"}


def test_resumed_case_keeps_its_last_profile(tmp_path):
    """A run killed between a case's profile and its rows: the resume measures the case again and appends a
    second profile, which replaces the first on load."""
    out = tmp_path / "resumed.csv"
    suite = write_suite(tmp_path, mechanisms=["softmax_eager", "softmax_sdpa"])
    assert main(["run", str(suite), "--out", str(out), "--profile", "--no-progress"]) == 0
    first = results.load_kernels(out)
    lines = out.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    lost = body[-1].split(",")[2]  # the case written last: drop its rows, as if killed before they were written
    out.write_text(header + "".join(line for line in body if line.split(",")[2] != lost))
    assert main(["run", str(suite), "--out", str(out), "--profile", "--resume", "--no-progress"]) == 0
    raw = pd.read_csv(results.companion(out, "kernels.csv"))
    assert raw.groupby("case_id").size()[lost] == 2 * first.groupby("case_id").size()[lost]  # appended again
    again = results.load_kernels(out)
    assert again.groupby("case_id")["share"].sum().round(4).eq(1).all()
    assert set(again["case_id"]) == set(first["case_id"]) and len(again) == len(first)
    assert set(results.load(out)["case_id"]) == set(first["case_id"])


def test_load_kernels_last_block_wins_and_bad_lines_are_skipped(tmp_path):
    path = tmp_path / "x.kernels.csv"
    path.write_text(
        textwrap.dedent(
            """\
            case_id,name,calls,self_time_us,share,device
            a,aten::bmm,2.0,30.0,0.75,cpu
            a,aten::mul,1.0,10.0,0.25,cpu
            b,k1,1.0,5.0,1.0,cuda
            a,aten::bmm,2.0,20.0,0.5,cpu
            a,aten::add,1.0,20.0,0.5,cpu
            b,k2,1.0,-5.0,1.0,cuda
            c,op,1.0,1.0,1.0,tpu
            """
        )
    )
    with pytest.warns(UserWarning, match="skipped line") as caught:
        df = results.load_kernels(tmp_path / "x.csv")
    assert len(caught) == 2  # the negative time and the unknown device
    assert df[df.case_id == "a"][["name", "self_time_us"]].values.tolist() == [["aten::bmm", 20.0], ["aten::add", 20.0]]
    assert df[df.case_id == "b"]["name"].tolist() == ["k1"]


def _event(key, count, cpu_us, device_us, device_type):
    return SimpleNamespace(
        key=key,
        count=count,
        self_cpu_time_total=cpu_us,
        self_device_time_total=device_us,
        device_type=SimpleNamespace(name=device_type),
    )


def test_attribution_cuda_kernels_by_device_time_else_cpu_ops():
    events = [
        _event("aten::bmm", 6, 90.0, 0.0, "CPU"),
        _event("ampere_sgemm_64x64_nn", 6, 0.0, 300.0, "CUDA"),
        _event("softmax_warp_forward", 2, 0.0, 60.0, "CUDA"),  # one name in two entries: one line
        _event("softmax_warp_forward", 1, 0.0, 40.0, "CUDA"),
    ]
    cuda = profiling.attribution(events, "cuda", calls=3)
    assert [(r["name"], r["calls"], r["self_time_us"], r["share"], r["device"]) for r in cuda] == [
        ("ampere_sgemm_64x64_nn", 2.0, 100.0, 0.75, "cuda"),
        ("softmax_warp_forward", 1.0, 33.333, 0.25, "cuda"),
    ]
    assert [r["device"] for r in profiling.attribution(events[:1], "cuda", 3)] == ["cpu"]  # no kernel seen
    cpu = profiling.attribution(events, "cpu", calls=3)
    assert [(r["name"], r["share"]) for r in cpu] == [("aten::bmm", 1.0)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top", "2"], "add --kernels"),
        (["--kernels", "--top", "0"], "--top must be at least 1"),
        (["--kernels", "--plot", "figs", "--baseline", "softmax_sdpa"], "drop --plot, --baseline"),
        (["--kernels"], "run --profile"),
    ],
)
def test_report_kernels_user_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "none.csv"
    out.write_text(",".join(results.COLUMNS) + "\n")
    assert main(["report", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnbench: error:") and message in " ".join(err.split())
