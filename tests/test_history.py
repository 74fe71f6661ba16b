"""`history`: series per (case, machine) ordered by commit, change points found with a noise-calibrated rule.
Synthetic series with a known step (found at the right commit, its size inside the interval) and without one
(flat noisy series flag a step at about the per-series rate alpha at most), results files written directly,
machine_id kept apart from the commit, commit order from a real git history, the output formats and one-line
errors."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from attnbench import results
from attnbench.cli import main
from attnbench.history import HistoryError, find_steps, history
from attnbench.machine import machine_id

MACHINE = {"device": "cpu", "cpu_model": "Test CPU 9000", "cpu_count": 8, "versions": {"torch": "2.13.0"}}


def commit_of(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()


def write_run(
    path: Path,
    commit: str,
    started_at: str,
    cases: dict[str, np.ndarray],
    *,
    machine: dict | None = None,
    dirty: bool = False,
    record_machine_id: bool = False,
    samples: bool = True,
) -> Path:
    """A results file as `attnbench run` writes it: one latency row per case, FILE.samples.csv with one round per
    value in `cases[case]` (three repeats around it), FILE.env.json with the commit and the machine."""
    fp = {**(machine or MACHINE), "git_commit": commit, "git_dirty": dirty, "load_average_1m": 0.5}
    if record_machine_id:
        fp["machine_id"] = machine_id(fp)
    env_id = f"env{commit[-6:]}{int(dirty)}"
    writer = results.ResultsWriter(path)
    writer.write_env(env_id, fp)
    for i, (case_id, levels) in enumerate(cases.items()):
        row = {c: "" for c in results.COLUMNS} | {
            "schema_version": 2,
            "case_id": case_id,
            "mechanism": f"mech{i}",
            "level": "op",
            "pass": "fwd",
            "device": "cpu",
            "dtype": "fp32",
            "batch": 1,
            "height": 14,
            "width": 14,
            "metric": "latency",
            "value": float(np.median(levels)),
            "unit": "ms",
            "stat": "median",
            "status": "ok",
            "source": "measured",
            "env_id": env_id,
            "started_at": started_at,
        }
        writer.write_rows([row])
        if samples:
            for r, level in enumerate(levels):
                writer.write_samples(case_id, "latency", [level * 0.999, level, level * 1.001], round=r)
    writer.close()
    return path


def series_runs(folder: Path, levels: dict[str, list[float]], *, seed: int = 0, noise: float = 0.02, **kw) -> Path:
    """One run per commit i (started one hour apart), each case at levels[case][i] times lognormal run noise,
    in 3 rounds with a fifth of that noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(levels.values())))
    for i in range(n):
        cases = {}
        for case, lv in levels.items():
            run_level = lv[i] * rng.lognormal(0, noise)
            cases[case] = run_level * rng.lognormal(0, noise / 5, 3)
        write_run(folder / f"run{i:02d}.csv", commit_of(i), f"2026-01-01T{i:02d}:00:00+00:00", cases, **kw)
    return folder


def test_flat_noisy_series_rarely_show_a_step():
    """Per series the rule flags a flat Gaussian series with probability about alpha at most (Bonferroni over the
    places a step could be): 240 seeded series of 6 to 16 runs. (Without the Bonferroni level, PELT's candidates
    alone flag about 20 % of them.)"""
    rng = np.random.default_rng(7)
    flagged = [bool(find_steps(rng.normal(0, 0.03, n))) for n in (6, 10, 16) for _ in range(80)]
    assert sum(flagged) / len(flagged) <= 0.07


def test_outlying_runs_and_heavy_tails_rarely_show_a_step():
    """One run 10 sigmas off in a flat series, or Student-t (3 dof) noise: a step in few series at most."""
    rng = np.random.default_rng(9)
    outliers = []
    for _ in range(60):
        y = rng.normal(0, 0.02, 16)
        y[rng.integers(16)] += 0.2
        outliers.append(bool(find_steps(y)))
    heavy = [bool(find_steps(0.02 * rng.standard_t(3, 16))) for _ in range(60)]
    assert sum(outliers) <= 5 and sum(heavy) <= 6


def test_a_step_of_four_sigmas_is_found_at_its_place_and_sized():
    rng = np.random.default_rng(8)
    hits = covered = 0
    for _ in range(100):
        y = rng.normal(0, 0.02, 12)
        y[5:] += 4 * 0.02
        found = find_steps(y)
        if [f[0] for f in found] == [5]:
            hits += 1
            covered += found[0][3] < math.exp(0.08) < found[0][4]
    assert hits >= 75 and covered >= 0.85 * hits


def test_two_steps_and_no_step_below_four_runs():
    y = np.log([1.0, 1.01, 0.99, 1.0, 1.5, 1.49, 1.51, 1.5, 1.0, 1.01, 0.99, 1.0])
    assert [f[0] for f in find_steps(y)] == [4, 8]
    assert find_steps(np.log([1.0, 1.0, 2.0, 2.0, 2.0])) == []  # a step needs 3 points on each side


def test_history_finds_the_commit_of_a_step_in_results_files(tmp_path):
    stepped = [1.0] * 5 + [1.25] * 5
    folder = series_runs(tmp_path / "runs", {"aa01": stepped, "bb02": [2.0] * 10})
    result = history([folder])
    [step] = result.steps
    assert step.case_id == "aa01" and step.commit_before == commit_of(4) and step.commit_after == commit_of(5)
    assert step.ci_low < 1.25 < step.ci_high and abs(step.change - 1.25) < 0.05 and step.direction == "slower"
    assert step.runs_before == step.runs_after == 5 and step.commits_between is None
    assert [s.order for s in result.series] == ["run time", "run time"]  # the fake commits are in no git history
    assert any("ordered by run time" in n for n in result.notes)
    globbed = history(sorted(folder.glob("*.csv")))  # FILE.samples.csv stands for its FILE.csv
    assert globbed.steps == result.steps and len(globbed.series[0].points) == 10


def test_machines_are_separate_series_unless_across_hardware(tmp_path):
    """Two machines alternate; the second is twice as slow. Per machine both series are flat; mixed, they jump."""
    folder = tmp_path / "runs"
    other = {**MACHINE, "cpu_model": "Slow CPU 1"}
    for i in range(8):
        machine, level = (MACHINE, 1.0) if i % 2 == 0 else (other, 2.0)
        stamp = f"2026-01-01T{i:02d}:00:00+00:00"
        write_run(
            folder / f"r{i}.csv", commit_of(i), stamp, {"c1": level * np.array([1.0, 1.01, 0.99])}, machine=machine
        )
    result = history([folder])
    assert len(result.series) == 2 and not result.steps
    assert {s.machine_id for s in result.series} == {machine_id(MACHINE), machine_id(other)}
    mixed = history([folder], across_hardware=True)
    assert len(mixed.series) == 1 and len(mixed.series[0].points) == 8


def test_machine_id_ignores_the_commit_and_old_files_derive_it(tmp_path):
    """machine_id is the same for every commit and placement; a file that records it and one that does not
    (written before it existed) land in one series."""
    fp = {**MACHINE, "git_commit": commit_of(1), "hostname": "a", "load_average_1m": 1.0}
    same = {**MACHINE, "git_commit": commit_of(2), "git_dirty": True, "hostname": "b", "free_cores": 3}
    assert machine_id(fp) == machine_id(same) != machine_id({**MACHINE, "versions": {"torch": "2.12.0"}})
    for i in range(4):
        write_run(tmp_path / f"r{i}.csv", commit_of(i), f"2026-01-0{i + 1}", {"c": np.ones(3)}, record_machine_id=i < 2)
    assert len(history([tmp_path]).series) == 1


def test_runs_of_one_commit_pool_into_one_point(tmp_path):
    for i, commit in enumerate([0, 0, 1, 2, 3]):
        write_run(tmp_path / f"r{i}.csv", commit_of(commit), f"2026-01-0{i + 1}", {"c": np.full(3, 1.0 + i / 100)})
    write_run(tmp_path / "dirty.csv", commit_of(3), "2026-01-09", {"c": np.ones(2)}, dirty=True)
    [s] = history([tmp_path]).series
    assert [p.label for p in s.points] == [commit_of(c)[:10] for c in range(4)] + [commit_of(3)[:10] + "+dirty"]
    assert s.points[0].rounds.size == 6 and s.points[-1].rounds.size == 2


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env |= {"PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env).stdout


def test_commit_order_comes_from_git_not_run_time(tmp_path):
    """Runs measured in shuffled order: the series follows the git history, and a step's commit range is counted."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    commits = []
    for i in range(8):
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"c{i}")
        commits.append(_git(repo, "rev-parse", "HEAD").strip())
    measured = [3, 0, 6, 1, 7, 5, 2]  # commit 4 never measured: the step lies in commits 3..5
    for hour, k in enumerate(measured):
        level = 1.0 if k <= 3 else 1.3
        write_run(tmp_path / "runs" / f"r{k}.csv", commits[k], f"2026-01-01T{hour:02d}", {"c": level * np.ones(3)})
    result = history([tmp_path / "runs"], repo=repo)
    [s] = result.series
    assert s.order == "commits" and [p.commit for p in s.points] == [commits[k] for k in (0, 1, 2, 3, 5, 6, 7)]
    [step] = result.steps
    assert (step.commit_before, step.commit_after, step.commits_between) == (commits[3], commits[5], 2)


def test_files_without_samples_use_the_row_value(tmp_path):
    folder = series_runs(tmp_path / "runs", {"c": [1.0] * 4 + [2.0] * 4}, samples=False)
    [step] = history([folder]).steps
    assert step.commit_after == commit_of(4) and abs(step.change - 2) < 0.15


def test_cli_formats_and_plots(tmp_path, capsys):
    folder = series_runs(tmp_path / "runs", {"aa01": [1.0] * 4 + [0.7] * 4, "bb02": [1.0] * 8})
    assert main(["history", str(folder), "--format", "json", "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    [step] = doc["steps"]
    assert step["case_id"] == "aa01" and step["mechanism"] == "mech0" and step["direction"] == "faster"
    assert (step["commit_before"], step["commit_after"]) == (commit_of(3), commit_of(4))
    low, high = step["change_interval"]
    assert low < step["change"] < high and abs(step["change"] - 0.7) < 0.05
    assert [p.name for p in (tmp_path / "plots").iterdir()] == [f"aa01-{machine_id(MACHINE)}.png"]
    assert (tmp_path / "plots" / f"aa01-{machine_id(MACHINE)}.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["history", str(folder), "--format", "csv", "--case", "AA*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("case,case_id,machine,commits") and ",aa01," in lines[1]
    assert main(["history", str(folder), "--format", "md", "--case", "mech*"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("### attnbench history: latency") and "1 steps in 1 of 2 series checked" in text
    assert f"| mech0 op fwd fp32 b1 14x14 | aa01 | cpu Test CPU 9000 ({machine_id(MACHINE)}) | " in text
    assert main(["history", str(folder)]) == 0
    term = capsys.readouterr().out
    assert f"{step['change'] - 1:+.1%}" in term and f"{commit_of(3)[:10]}..{commit_of(4)[:10]}" in term


def _errors(tmp_path: Path) -> list[tuple[list[str], str]]:
    folder = series_runs(tmp_path / "runs", {"c": [1.0] * 4})
    bare = write_run(tmp_path / "bare.csv", commit_of(1), "2026-01-01", {"c": np.ones(3)})
    results.companion(bare, "env.json").unlink()
    nocommit = write_run(tmp_path / "nocommit.csv", "", "2026-01-01", {"c": np.ones(3)})
    (tmp_path / "empty").mkdir()
    return [
        (["history", str(tmp_path / "missing")], "not found"),
        (["history", str(tmp_path / "empty")], "no results files"),
        (["history", str(folder), "--metric", "throughput"], "check --metric"),
        (["history", str(bare)], "has no bare.env.json"),
        (["history", str(nocommit)], "no git commit"),
        (["history", str(folder), "--case", "zzz*"], "no case matches"),
        (["history", str(folder), "--alpha", "1.5"], "strictly between 0 and 1"),
    ]


def test_usage_errors_are_one_line(tmp_path, capsys):
    for argv, expected in _errors(tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("attnbench: error:") and expected in err and len(err.splitlines()) == 1, (argv, err)


def test_history_error_is_an_attnbench_error():
    with pytest.raises(HistoryError):
        history([], metric="latency")


def test_a_run_records_its_machine_id_apart_from_its_commit(capsys):
    """prepare_process (every run's set-up) writes machine_id into the fingerprint that goes to FILE.env.json:
    the same id for another commit or host, while env_id changes with the commit; `env` prints both."""
    from attnbench.execute import prepare_process
    from attnbench.measure.env import env_id
    from attnbench.suite import load_suite

    setup = prepare_process(load_suite(Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml"))
    fp = setup.fingerprint
    moved = {**fp, "git_commit": commit_of(99), "git_commit_date": "2030-01-01T00:00:00+00:00", "hostname": "other"}
    assert fp["machine_id"] == machine_id(moved) and setup.env_id == env_id(fp) != env_id(moved)
    assert fp["git_commit_date"] and fp["machine_id"] != machine_id({**fp, "cpu_count": 10**6})
    assert main(["env", "--device", "cpu"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["machine_id"] == machine_id(shown) and shown["env_id"] != shown["machine_id"]


def test_report_html_shows_the_history_section(tmp_path, capsys):
    """`report FILE --html OUT --history RUNS`: the page gains a History section with the change-point table and
    one figure per series with a step; --history without --html is refused in one line."""
    folder = series_runs(tmp_path / "runs", {"aa01": [1.0] * 4 + [0.7] * 4, "bb02": [1.0] * 8})
    newest, page = folder / "run07.csv", tmp_path / "page.html"
    assert main(["report", str(newest), "--history", str(folder)]) == 2
    assert "add --html" in capsys.readouterr().err
    assert main(["report", str(newest), "--html", str(page), "--history", str(folder)]) == 0
    text = page.read_text()
    section = text[text.index('id="history"') :]
    section = section[: section.index('id="environment"')]
    assert "1 change point at alpha 0.05" in section and f"{commit_of(3)[:10]}..{commit_of(4)[:10]}" in section
    assert section.count("<svg") == 1 and "aa01" in section and "bb02" not in section
