"""The Python API (attnbench.run / load / load_samples), shipped suites by name, and the registry loading the
built-in mechanisms on first use."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import attnbench
from attnbench import registry
from attnbench.cli import main
from attnbench.errors import AttnbenchError, ResultsError, SuiteError
from attnbench.suite import load_suite, shipped_suites

REPO = Path(__file__).resolve().parents[1]

# one case (softmax_sdpa, op, fwd, 4x4 tokens), measured in this process: a run takes well under a second
TINY = {
    "name": "tiny-api",
    "mechanisms": ["softmax_sdpa"],
    "level": "op",
    "pass": "fwd",
    "resolution": [4],
    "dim": 16,
    "heads": 1,
    "batch": 1,
    "dtype": "fp32",
    "device": "cpu",
    "threads": 1,
    "isolation": "inprocess",
    "warmup": 1,
    "repeats": {"min": 2, "max": 2, "min_time_s": 0},
}


def _csv_records(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of TINY in two rounds of 3 repeats (rounds and overrides given to the API) into a file."""
    out = tmp_path_factory.mktemp("api") / "tiny.csv"
    df = attnbench.run(TINY, out=out, rounds=2, overrides={"repeats.min": 3, "repeats.max": 3})
    return df, out


def test_run_returns_the_rows_of_the_csv_it_writes(tiny_run):
    df, out = tiny_run
    records = _csv_records(out)
    assert len(df) == len(records) > 0
    assert list(df["case_id"] + "/" + df["metric"] + "/" + df["stat"]) == [
        f"{r['case_id']}/{r['metric']}/{r['stat']}" for r in records
    ]
    written = [float(r["value"]) if r["value"] else float("nan") for r in records]
    assert df["value"].tolist() == pytest.approx(written, nan_ok=True)
    assert set(df["mechanism"]) == {"softmax_sdpa"} and set(df["status"]) == {"ok"}
    assert set(df["tokens"]) == {16}  # resolution 4: 4 x 4 tokens
    assert {"latency", "rel_err"} <= set(df["metric"])
    for kind in ("samples.csv", "env.json", "suite.yaml"):
        assert out.with_name(f"tiny.{kind}").is_file()


def test_rounds_and_overrides_reach_the_run(tiny_run):
    _, out = tiny_run
    latency = [r for r in _csv_records(out.with_name("tiny.samples.csv")) if r["metric"] == "latency"]
    per_round = {rnd: sum(r["round"] == rnd for r in latency) for rnd in {r["round"] for r in latency}}
    assert per_round == {"0": 3, "1": 3}  # rounds=2; repeats 3 (overrides) instead of TINY's 2


def test_load_round_trip_equals_the_frame_run_returned(tiny_run):
    df, out = tiny_run
    pd.testing.assert_frame_equal(attnbench.load(out), df)
    pd.testing.assert_frame_equal(attnbench.load(str(out)), df)


def test_load_samples_from_the_results_csv_or_the_samples_file(tiny_run):
    _, out = tiny_run
    samples_file = out.with_name("tiny.samples.csv")
    records = _csv_records(samples_file)
    samples = attnbench.load_samples(out)
    assert list(samples.columns) == ["case_id", "metric", "round", "sweep", "rep", "value"]
    assert len(samples) == len(records) > 0
    assert samples["value"].tolist() == pytest.approx([float(r["value"]) for r in records])
    assert samples["round"].tolist() == [int(r["round"]) for r in records]
    pd.testing.assert_frame_equal(attnbench.load_samples(samples_file), samples)


def test_run_without_out_leaves_no_file_and_prints_nothing(tmp_path, monkeypatch, capsys):
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    df = attnbench.run(TINY, rounds=1)
    assert set(df["status"]) == {"ok"} and "latency" in set(df["metric"])
    assert list(temp.iterdir()) == [] and list(work.iterdir()) == []
    assert capsys.readouterr() == ("", "")


def test_progress_shows_a_bar(tmp_path, capsys):
    df = attnbench.run(TINY, rounds=1, out=tmp_path / "p.csv", progress=True)
    assert set(df["status"]) == {"ok"}
    assert "1/1" in capsys.readouterr().out  # visits done / total


def test_run_refuses_bad_input_before_measuring(tmp_path):
    with pytest.raises(SuiteError, match=r"unknown suite 'no_such_suite'.*shipped: .*smoke"):
        attnbench.run("no_such_suite")
    with pytest.raises(SuiteError, match="suite mapping: missing required key `mechanisms`"):
        attnbench.run({"name": "x", "level": "op", "resolution": [4]})
    with pytest.raises(SuiteError, match="unknown mechanism 'softmax_sdpx'"):
        attnbench.run({**TINY, "mechanisms": ["softmax_sdpx"]})
    with pytest.raises(SuiteError, match="overrides: unknown key `bogus`"):
        attnbench.run(TINY, overrides={"bogus": 1})
    with pytest.raises(SuiteError, match="`rounds` must be between 1 and"):
        attnbench.run(TINY, rounds=0)
    with pytest.raises(SuiteError, match="suite mapping: `warmup` has a value of type object"):
        attnbench.run({**TINY, "warmup": object()})
    with pytest.raises(AttnbenchError, match="overrides must be a mapping of suite keys"):
        attnbench.run(TINY, overrides=["rounds=1"])
    with pytest.raises(SuiteError, match="a suite is a YAML file's path, a shipped suite's name or a mapping"):
        attnbench.run(42)
    with pytest.raises(ResultsError, match="must name a .csv file"):
        attnbench.run(TINY, out=tmp_path / "results.txt")
    taken = tmp_path / "taken.csv"
    taken.write_text("case_id\n")
    with pytest.raises(ResultsError, match="taken.csv already exists; choose another out"):
        attnbench.run(TINY, out=taken)
    assert taken.read_text() == "case_id\n"
    assert not (tmp_path / "results.txt").exists()


def test_load_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ResultsError, match="results file .*missing.csv not found"):
        attnbench.load(tmp_path / "missing.csv")
    with pytest.raises(ResultsError, match="is a directory"):
        attnbench.load(tmp_path)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("name,score\nalice,3\n")
    with pytest.raises(ResultsError, match="not an attnbench results file: missing columns"):
        attnbench.load(garbage)
    samples = tmp_path / "run.samples.csv"
    samples.write_text("case_id,metric,round,sweep,rep,value\n")
    with pytest.raises(ResultsError, match="raw repeat samples; read it with attnbench.load_samples"):
        attnbench.load(samples)
    with pytest.raises(ResultsError, match="samples file .*missing.samples.csv not found"):
        attnbench.load_samples(tmp_path / "missing.csv")
    garbage.with_name("garbage.samples.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ResultsError, match="not an attnbench results file: missing columns"):
        attnbench.load_samples(garbage)


# -- shipped suites by name --------------------------------------------------------------------------------
def test_shipped_suites_are_the_files_of_the_suites_folder():
    assert shipped_suites() == {p.stem: p.resolve() for p in sorted((REPO / "suites").glob("*.yaml"))}
    assert load_suite("smoke").path == str((REPO / "suites" / "smoke.yaml").resolve())


def test_a_file_given_by_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text("name: local-smoke\nmechanisms: [softmax_sdpa]\nresolution: 4\nlevel: op\n")
    assert load_suite("smoke").name == "local-smoke"
    assert load_suite(str(REPO / "suites" / "smoke.yaml")).name == "smoke"


def test_cli_runs_a_shipped_suite_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "suite smoke on" in out and "nothing run (--dry-run)" in out
    assert main(["run", "smokey", "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown suite 'smokey'" in err and "smoke" in err.split("shipped:")[1]
    assert list(tmp_path.iterdir()) == []


def test_relative_plugin_paths_resolve_against_the_suite_file_or_the_working_directory(tmp_path, monkeypatch):
    plugin = textwrap.dedent(
        """
        from attnbench.registry import Mechanism, register_mechanism

        @register_mechanism({name!r}, family="test")
        class Identity(Mechanism):
            def op(self, q, k, v, *, grid):
                return v
        """
    )
    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "plug.py").write_text(plugin.format(name="test_api_file_plugin"))
    (folder / "mine.yaml").write_text(
        "name: mine\nmechanisms: [test_api_file_plugin]\nplugins: [plug.py]\nlevel: op\nresolution: 4\n"
    )
    (tmp_path / "here.py").write_text(plugin.format(name="test_api_mapping_plugin"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        monkeypatch.chdir(elsewhere)
        suite = load_suite(folder / "mine.yaml")
        assert suite.plugins == (str((folder / "plug.py").resolve()),)
        monkeypatch.chdir(tmp_path)
        mapping = {"name": "m", "mechanisms": ["test_api_mapping_plugin"], "plugins": ["here.py"], "resolution": 4}
        assert load_suite(mapping).plugins == (str((tmp_path / "here.py").resolve()),)
    finally:
        registry.unregister("test_api_file_plugin")
        registry.unregister("test_api_mapping_plugin")


# -- built-ins on first use ---------------------------------------------------------------------------------
def test_lookups_load_the_builtins_once_on_first_use(monkeypatch):
    from attnbench import loading

    calls = []
    monkeypatch.setattr(loading, "load_mechanisms", lambda **kw: calls.append(kw) or [])
    for lookup in (registry.names, registry.families, lambda: registry.get("softmax_sdpa")):
        monkeypatch.setattr(registry, "_BUILTINS_REQUESTED", False)
        calls.clear()
        lookup()
        lookup()
        assert calls == [{"entry_points": False}]  # built-ins only, once: entry points and plugins stay explicit


def test_a_failed_builtin_load_is_retried_on_the_next_lookup(monkeypatch):
    from attnbench import loading

    def broken(**kw):
        raise loading.PluginError("built-in mechanisms 'mechanisms' failed to import: boom")

    monkeypatch.setattr(loading, "load_mechanisms", broken)
    monkeypatch.setattr(registry, "_BUILTINS_REQUESTED", False)
    for _ in range(2):
        with pytest.raises(loading.PluginError, match="boom"):
            registry.names()


def test_fresh_interpreter_builds_a_model_without_a_setup_call(tmp_path):
    """`import attnbench` imports neither torch nor pandas nor a mechanism; create_ravlt then loads the built-ins."""
    code = textwrap.dedent(
        """
        import sys
        import attnbench
        attnbench.run, attnbench.load
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pandas", "mechanisms"))
        print("heavy:", heavy)
        from attnbench.models import create_ravlt
        model = create_ravlt("ravlt_t")
        print("params:", sum(p.numel() for p in model.parameters()))
        from attnbench import registry
        print("mixers:", ",".join(model.mixer_names))
        print("builtins imported:", "mechanisms.rala" in sys.modules)
        print("families:", registry.families())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert lines["heavy"] == "[]"
    assert 14e6 < int(lines["params"]) < 16e6  # RAVLT-T: 15M parameters (the paper's table)
    assert lines["mixers"] == "rala_eager,softmax_eager"  # the defaults (RALA early, softmax late), from the registry
    assert lines["builtins imported"] == "True"
    assert {"linear", "rala", "softmax"} <= set(eval(lines["families"]))
