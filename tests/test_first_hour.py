"""A new user's first hour: the plugin template, a hint when a mechanism fails verification everywhere,
`python -m attnbench` from the folder that holds a clone, `report` over two runs of the same cases, and
`--debug` anywhere on the command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from attnbench import results
from attnbench.cli import main
from attnbench.errors import AttnbenchError

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "tests" / "plugins"


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def write_suite(folder: Path, body: str) -> Path:
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    return path


TINY = """\
level: op
dim: 16
heads: 1
batch: 1
device: cpu
warmup: 1
repeats: {min: 3, max: 3, min_time_s: 0}
rounds: 1
"""


# -- the plugin template ------------------------------------------------------------------------------
def test_plugin_template_runs_verifies_and_times_its_cases(tmp_path):
    """The template, copied beside a suite as a user would, is verified against itself in float64 and timed."""
    shutil.copy(PLUGINS / "my_mechanism.py", tmp_path / "my_mechanism.py")
    suite = write_suite(
        tmp_path,
        TINY
        + textwrap.dedent("""\
            name: template
            plugins: [./my_mechanism.py]
            mechanisms: [my_mechanism]
            resolution: [7, 14]
            dtype: [fp32, bf16]
            pass: [fwd, fwd_bwd]
            """),
    )
    out = tmp_path / "template.csv"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "failed verification" not in proc.stderr
    df = results.load(out)
    assert set(df["mechanism"]) == {"my_mechanism"} and (df["status"] == "ok").all()
    errs = df[df["metric"] == "rel_err"]
    assert len(errs) == 8  # 2 grids x 2 dtypes x 2 passes, each verified
    assert errs["note"].str.contains("vs my_mechanism in float64").all()
    tolerance = errs["note"].str.extract(r"tolerance ([0-9.e+-]+)")[0].astype(float)
    assert (errs["value"] <= tolerance).all()
    assert len(df[(df["metric"] == "grad_rel_err")]) == 4  # the fwd_bwd cases' gradients
    latency = df[(df["metric"] == "latency") & (df["stat"] == "median")]
    assert len(latency) == 8 and (latency["value"] > 0).all()


def test_plugin_template_computes_linear_attention():
    """Its op is elu+1 linear attention: out_n = sum_m (phi(q_n).phi(k_m)) v_m / sum_m phi(q_n).phi(k_m)."""
    import torch

    from attnbench import registry

    registry.load_plugins([str(PLUGINS / "my_mechanism.py")])
    try:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 3, 20, 8, dtype=torch.float64, generator=gen) for _ in range(3))
        phi_q, phi_k = (torch.where(t > 0, t + 1, t.exp()) for t in (q, k))
        weights = phi_q @ phi_k.transpose(-2, -1)  # (B, h, N, N)
        expected = (weights / weights.sum(-1, keepdim=True)) @ v
        out = registry.get("my_mechanism").op(q, k, v, grid=(4, 5))
    finally:
        registry.unregister("my_mechanism")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


# -- a mechanism that fails verification everywhere -----------------------------------------------------
def test_failing_verification_everywhere_ends_with_a_hint_and_exit_2(tmp_path):
    suite = write_suite(
        tmp_path,
        TINY
        + textwrap.dedent(f"""\
            name: wrong
            plugins: [{PLUGINS / "wrong_reference.py"}]
            mechanisms: [linear_vs_softmax, off_in_low_precision, softmax_eager]
            resolution: [7, 14]
            dtype: fp32
            pass: fwd
            """),
    )
    out = tmp_path / "wrong.csv"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert "latency ms" in proc.stdout  # the tables of what was measured come first
    (hint,) = [line for line in proc.stderr.splitlines() if line.startswith("attnbench: error:")]
    against_softmax = re.search(
        r"every case of linear_vs_softmax failed verification against softmax_eager [^;]*", hint
    )
    assert against_softmax and "2 case(s)" in against_softmax.group() and "reference=None" in against_softmax.group()
    against_itself = re.search(
        r"every case of off_in_low_precision failed verification against itself in float64", hint
    )
    assert against_itself and "overflow" in hint
    assert "`reference`" in hint and "checks it against itself run in float64" in hint
    # what was measured is written: softmax_eager's times, the failures as error rows with their errors
    df = results.load(out)
    soft = df[(df["mechanism"] == "softmax_eager") & (df["metric"] == "latency") & (df["stat"] == "median")]
    assert len(soft) == 2 and (soft["status"] == "ok").all() and (soft["value"] > 0).all()
    failed = df[df["mechanism"].isin(["linear_vs_softmax", "off_in_low_precision"])]
    assert (failed["status"] == "error").all() and failed["message"].str.startswith("verify failed").all()
    assert (failed.loc[failed["metric"] == "rel_err", "value"] > 0.1).all()


def test_no_hint_while_some_case_of_the_mechanism_passes():
    from attnbench.summary import verification_failures

    def row(case, status, value):
        note = "output vs softmax_eager in float64; tolerance 2.4e-06"
        return {"mechanism": "m", "case_id": case, "metric": "rel_err", "status": status, "value": value, "note": note}

    both = pd.DataFrame([row("a", "error", 0.3), row("b", "ok", 1e-7)])
    assert verification_failures(both) == []
    (only,) = verification_failures(pd.DataFrame([row("a", "error", 0.3), row("b", "error", 0.5)]))
    assert (only.mechanism, only.reference, only.cases, only.rel_err) == ("m", "softmax_eager", 2, 0.5)
    assert only.tolerance == pytest.approx(2.4e-06)


# -- python -m attnbench from the folder that holds a clone named attnbench ------------------------------
# As an editable install (setuptools) does: a meta path hook, asked after Python's path finder, maps the
# packages to this checkout; sys.path[0] is the working directory, as with `python -m`.
EDITABLE_LAUNCH = """
import importlib.util, os, runpy, sys
from importlib.machinery import PathFinder
repo = sys.argv.pop(1)
mapping = {name: os.path.join(repo, name) for name in ("attnbench", "mechanisms")}

class EditableFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in mapping:
            return importlib.util.spec_from_file_location(fullname, os.path.join(mapping[fullname], "__init__.py"))
        if fullname.rpartition(".")[0] in mapping:
            return PathFinder.find_spec(fullname, [mapping[fullname.rpartition(".")[0]]])
        return None

sys.meta_path.insert(sys.meta_path.index(PathFinder) + 1, EditableFinder)
sys.path[0] = os.getcwd()
if sys.argv[1:] == ["--which"]:
    import attnbench
    print("attnbench from", attnbench.__file__)
else:
    runpy.run_module("attnbench", run_name="__main__", alter_sys=True)
"""


def run_installed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-c", EDITABLE_LAUNCH, str(REPO), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_python_m_works_from_the_folder_that_holds_the_clone(tmp_path):
    clone = tmp_path / "attnbench"  # a clone's root: no __init__.py, a results/ folder
    (clone / "results").mkdir(parents=True)
    (clone / "suites").mkdir()
    # the setting is the one that breaks: `import attnbench` there finds the clone's root, a namespace package
    which = run_installed("--which", cwd=tmp_path)
    assert which.returncode == 0 and "attnbench from None" in which.stdout, which.stderr
    suite = write_suite(
        clone / "suites",
        TINY + "name: tiny\nmechanisms: [softmax_eager]\nresolution: [4]\ndtype: fp32\npass: fwd\n",
    )
    out = clone / "results" / "tiny.csv"
    # isolation: process: the round runs in a spawned worker, which imports the package again
    args = ["run", str(suite.relative_to(tmp_path)), "--out", "attnbench/results/tiny.csv", "--no-progress"]
    proc = run_installed(*args, "--set", "isolation=process", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = results.load(out)
    latency = df[(df["metric"] == "latency") & (df["stat"] == "median")]
    assert (latency["status"] == "ok").all() and len(latency) == 1 and latency["worker"].str.contains("pid").all()
    rep = run_installed("report", "attnbench/results/tiny.csv", cwd=tmp_path)
    assert rep.returncode == 0 and "softmax_eager" in rep.stdout, rep.stderr


# -- report over files that measure the same cases -------------------------------------------------------
def results_file(path: Path, medians: dict[str, float], run_id: str) -> Path:
    """A results CSV with one op case per mechanism, latency median `medians[m]` ms (p20/p80 at -/+ 10 %)."""
    case = {"schema_version": 2, "run_id": run_id, "suite": "s", "family": "f", "backend": "torch", "level": "op"}
    case |= {"pass": "fwd", "device": "cpu", "dtype": "fp32", "batch": 1, "height": 7, "width": 7, "tokens": 49}
    case |= {"heads": 1, "head_dim": 16, "dim": 16, "metric": "latency", "unit": "ms", "status": "ok"}
    case |= {"source": "measured", "env_id": "e", "concurrent": 1}
    rows = [
        {**dict.fromkeys(results.COLUMNS, ""), **case, "case_id": f"case-{mech}", "mechanism": mech, "stat": stat}
        | {"value": value}
        for mech, med in medians.items()
        for stat, value in (("median", med), ("p20", med * 0.9), ("p80", med * 1.1))
    ]
    pd.DataFrame(rows, columns=results.COLUMNS).to_csv(path, index=False)
    return path


def test_report_of_two_runs_of_the_same_cases_shows_both(tmp_path):
    a = results_file(tmp_path / "a.csv", {"alpha": 1.23, "beta": 2.34}, "runa")
    b = results_file(tmp_path / "b.csv", {"alpha": 45.6, "beta": 56.7}, "runb")
    proc = run_cli("report", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"note: 2 case\(s\) have rows in more than one of .*a\.csv, .*b\.csv", proc.stdout)
    for value in ("1.23", "2.34", "45.6", "56.7"):
        assert value in proc.stdout
    assert proc.stdout.index("a.csv ─") < proc.stdout.index("1.23") < proc.stdout.index("b.csv ─")
    assert proc.stdout.index("b.csv ─") < proc.stdout.index("45.6")
    # tidy CSV: a file column, every file's rows; the note on stderr
    csv = run_cli("report", str(a), str(b), "--format", "csv")
    assert csv.returncode == 0 and "note:" in csv.stderr
    tidy = pd.read_csv(pd.io.common.StringIO(csv.stdout))
    got = {(Path(f).name, m): v for f, m, v in tidy[["file", "mechanism", "value"]].itertuples(index=False)}
    assert got == {("a.csv", "alpha"): 1.23, ("a.csv", "beta"): 2.34, ("b.csv", "alpha"): 45.6, ("b.csv", "beta"): 56.7}
    md = run_cli("report", str(a), str(b), "--format", "md")
    titles = [line for line in md.stdout.splitlines() if line.startswith("**")]
    assert any(re.search(r"a\.csv: Median .*latency", t) for t in titles)
    assert any(re.search(r"b\.csv: Median .*latency", t) for t in titles)


def test_report_of_files_with_different_cases_is_one_table(tmp_path):
    a = results_file(tmp_path / "a.csv", {"alpha": 1.23}, "runa")
    b = results_file(tmp_path / "b.csv", {"beta": 45.6}, "runb")
    proc = run_cli("report", str(a), str(b), "--format", "csv")
    assert proc.returncode == 0 and "note:" not in proc.stderr, proc.stderr
    tidy = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    assert "file" not in tidy.columns
    assert dict(zip(tidy["mechanism"], tidy["value"])) == {"alpha": 1.23, "beta": 45.6}


# -- --debug anywhere ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--debug", "report", "missing.csv"],
        ["report", "--debug", "missing.csv"],
        ["report", "missing.csv", "--debug"],
        ["run", "missing.yaml", "--debug"],
        ["gate", "missing-a.csv", "--", "missing-b.csv", "--debug"],
        ["compare", "missing-a.csv", "missing-b.csv", "--debug"],
    ],
)
def test_debug_is_accepted_anywhere(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AttnbenchError):  # --debug: the error propagates (its traceback is shown)
        main(args)
    assert main([a for a in args if a != "--debug"]) == 2  # without: one line, exit 2
