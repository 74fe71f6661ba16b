"""Regression gate on run-level evidence: verdicts on synthetic hierarchical runs (strong between-round noise,
tight repeats within a round) with known shifts, Welch's test and Holm against scipy and hand-computed values,
several files per side, pytest-benchmark input, and one-line usage errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from attnbench import results, stats
from attnbench.errors import AttnbenchError
from attnbench.gate import GateError, format_rows, gate, gate_rounds, parse_threshold
from attnbench.stats import holm

BETWEEN = 0.05  # lognormal sd of a round's level (process, layout, load): the noise that matters
WITHIN = 0.01  # lognormal sd of repeats inside one round


def run_rounds(
    rng: np.random.Generator,
    center: float,
    rounds: int = 5,
    reps: int = 20,
    between: float = BETWEEN,
    within: float = WITHIN,
) -> list[np.ndarray]:
    """One case's repeats in `rounds` rounds: each round's level drawn around center, repeats tight around it."""
    levels = center * rng.lognormal(0.0, between, rounds)
    return [lvl * rng.lognormal(0.0, within, reps) for lvl in levels]


def write_run(path: Path, samples: dict[str, list[np.ndarray]], metric: str = "latency", unit: str = "ms") -> Path:
    """A results CSV (one median row per case) plus FILE.samples.csv with rounds, written by the real writer."""
    writer = results.ResultsWriter(path)
    for i, (case_id, rounds) in enumerate(samples.items()):
        row = {c: "" for c in results.COLUMNS} | {
            "schema_version": 1,
            "run_id": "r",
            "case_id": case_id,
            "suite": "s",
            "mechanism": f"mech{i}",
            "level": "op",
            "pass": "fwd",
            "device": "cpu",
            "dtype": "fp32",
            "batch": 1,
            "height": 14,
            "width": 14,
            "metric": metric,
            "value": float(np.median([np.median(r) for r in rounds])),
            "unit": unit,
            "stat": "median",
            "status": "ok",
            "source": "measured",
        }
        writer.write_rows([row])
        for r, values in enumerate(rounds):
            writer.write_samples(case_id, metric, [float(v) for v in values], round=r)
    writer.close()
    return path


def write_benchmark_json(path: Path, samples: dict[str, np.ndarray], prefix: str = "tests/test_speed.py::") -> Path:
    """pytest-benchmark --benchmark-save-data layout; `samples` in ms, stored as seconds per iteration."""
    benchmarks = [
        {
            **{"group": None, "name": name, "fullname": prefix + name, "params": None, "param": None},
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5},
            "stats": {"median": float(np.median(v)) / 1e3, "rounds": len(v), "data": [x / 1e3 for x in v.tolist()]},
        }
        for name, v in samples.items()
    ]
    path.write_text(json.dumps({"machine_info": {}, "commit_info": {}, "benchmarks": benchmarks, "version": "5.1.0"}))
    return path


def hierarchical_pair(
    rng: np.random.Generator,
    n_cases: int,
    shifts: dict[int, float] | None = None,
    rounds: int = 5,
    centers: np.ndarray | None = None,
    **kw,
) -> tuple[dict, dict]:
    """Baseline and new runs (case -> rounds of repeats) from one hierarchical distribution; case i of new
    scaled by shifts[i]. Case levels drawn once per call unless `centers` fixes them (several runs of a suite)."""
    shifts = shifts or {}
    centers = rng.uniform(0.05, 5.0, n_cases) if centers is None else centers
    base = {f"c{i}": run_rounds(rng, centers[i], rounds, **kw) for i in range(n_cases)}
    new = {f"c{i}": run_rounds(rng, centers[i] * shifts.get(i, 1.0), rounds, **kw) for i in range(n_cases)}
    return base, new


def medians(run: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.array([np.median(r) for r in rounds]) for k, rounds in run.items()}


def test_identical_code_passes_where_pooled_repeats_fail():
    """The issue's failure mode: two runs of one distribution with between-round noise. Pooling repeats makes
    nearly every A/A pair 'significant'; the gate on round medians passes >= 95 % of them."""
    rng = np.random.default_rng(1)
    trials, n_cases = 40, 24
    passed, pooled_flags = 0, 0
    for _ in range(trials):
        base, new = hierarchical_pair(rng, n_cases)
        passed += gate_rounds(medians(base), medians(new)).passed
        pooled_p = [sst.mannwhitneyu(np.concatenate(base[k]), np.concatenate(new[k])).pvalue for k in base]
        pooled_flags += bool((holm(pooled_p) <= 0.05).any())
    assert passed >= 0.95 * trials
    assert pooled_flags >= 0.9 * trials  # the within-process test is the wrong question


def test_30pct_slowdown_of_one_case_fails_naming_it(tmp_path):
    base, new = hierarchical_pair(np.random.default_rng(2), 24, shifts={3: 1.3})
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert result.exit_code == 1 and result.has_verdict
    [reg] = result.regressions
    assert reg.key == "c3" and reg.name == "mech3 op fwd fp32 b1 14x14"
    assert reg.n_base == reg.n_new == 5
    assert reg.ci_low < 1.3 < reg.ci_high and reg.p_holm <= 0.05
    assert format_rows(result)[0]["id"] == "c3" and format_rows(result)[0]["verdict"] == "regression"


def test_power_for_a_30pct_slowdown_over_seeded_trials():
    """Between-round noise 5 %, 5 rounds a side, 24 cases: the shifted case is caught in >= 90 % of pairs and no
    other case is ever named."""
    rng = np.random.default_rng(15)
    trials, caught, others = 40, 0, 0
    for _ in range(trials):
        base, new = hierarchical_pair(rng, 24, shifts={3: 1.3})
        keys = [c.key for c in gate_rounds(medians(base), medians(new)).regressions]
        caught += "c3" in keys
        others += any(k != "c3" for k in keys)
    assert caught >= 0.9 * trials and others == 0


def test_a_slowdown_inside_the_noise_is_not_a_regression():
    """10 % on a case whose rounds scatter by ~30 %: not distinguishable, so not flagged."""
    rng = np.random.default_rng(11)
    base, new = hierarchical_pair(rng, 8, shifts={0: 1.1}, between=0.3)
    result = gate_rounds(medians(base), medians(new))
    assert result.cases[0].verdict == "unchanged" and result.passed
    assert result.cases[0].noise > 0.15


def test_log_ratio_test_matches_welch_on_logs():
    rng = np.random.default_rng(12)
    a, b = rng.lognormal(0, 0.1, 5), rng.lognormal(0.2, 0.05, 7)
    p, low, high = stats.log_ratio_test(a, b, confidence=0.95)
    ref = sst.ttest_ind(np.log(b), np.log(a), equal_var=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (low, high) == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=1e-9)
    assert math.isnan(stats.log_ratio_test(a[:1], b)[0])  # one round: no noise estimate
    assert stats.log_ratio_test(np.ones(3), np.ones(3))[0] == 1.0  # no spread, same level
    assert stats.log_ratio_test(np.ones(3), 2 * np.ones(3))[:2] == (0.0, 2.0)


def test_round_medians_use_the_last_block_of_each_round():
    s = pd.DataFrame(
        {
            "case_id": ["x"] * 7,
            "metric": ["latency"] * 7,
            "round": [0, 0, 1, 1, 1, 1, 1],
            "rep": [0, 1, 0, 1, 0, 1, 2],
            "value": [1.0, 3.0, 9.0, 9.0, 4.0, 5.0, 6.0],
        }
    )
    # round 1 measured twice (a resumed run re-measured it): its last block 4, 5, 6 counts
    np.testing.assert_allclose(stats.round_medians(s)["x"], [2.0, 5.0])


def test_speedup_is_an_improvement_and_passes(tmp_path):
    base, new = hierarchical_pair(np.random.default_rng(4), 5, shifts={1: 0.7})
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert result.exit_code == 0
    assert [c.key for c in result.improvements] == ["c1"]
    assert result.improvements[0].change == pytest.approx(-0.3, abs=0.08)


def test_threshold_is_respected():
    rng = np.random.default_rng(5)
    base = {"x": 1.0 * rng.lognormal(0, 0.002, 8)}
    new = {"x": 1.03 * rng.lognormal(0, 0.002, 8)}
    at_5 = gate_rounds(base, new, threshold="5%")
    [case] = at_5.cases
    assert case.p_holm < 1e-6 and case.change == pytest.approx(0.03, abs=0.005)  # significant, below threshold
    assert case.verdict == "unchanged" and at_5.exit_code == 0
    assert gate_rounds(base, new, threshold="2%").exit_code == 1


def test_higher_is_better_metric_regresses_when_it_drops():
    rng = np.random.default_rng(6)
    base, new = {"x": 100 * rng.lognormal(0, 0.02, 5)}, {"x": 80 * rng.lognormal(0, 0.02, 5)}
    assert gate_rounds(base, new, metric="throughput").regressions[0].key == "x"
    assert gate_rounds(new, base, metric="throughput").improvements[0].key == "x"


def test_holm_matches_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 0.5 x 2 capped at 1
    np.testing.assert_allclose(holm([0.01, math.nan, 0.02]), [0.02, math.nan, 0.02])  # NaN not counted
    assert holm([]).shape == (0,)


@pytest.mark.parametrize("n_cases", [1, 4, 12])
def test_holm_is_applied_across_cases(n_cases):
    """One shifted case among n identical ones: its adjusted p is n x its raw p (the others have p = 1)."""
    rounds = [1.0, 1.02, 0.98, 1.01, 0.99]
    base = {f"c{i}": rounds for i in range(n_cases)}
    new = {f"c{i}": rounds for i in range(n_cases)}
    new["c0"] = [1.1 * r for r in [1.0, 1.03, 0.97, 1.0, 0.99]]
    case = gate_rounds(base, new).cases[0]
    expected = sst.ttest_ind(np.log(new["c0"]), np.log(rounds), equal_var=False).pvalue
    assert case.p_raw == pytest.approx(expected)
    assert case.p_holm == pytest.approx(min(1.0, n_cases * expected))


def test_too_few_rounds_give_no_verdict_and_exit_0(tmp_path):
    rng = np.random.default_rng(13)
    base, new = hierarchical_pair(rng, 3, shifts={0: 2.0}, rounds=1)
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert not result.has_verdict and result.exit_code == 0
    assert {c.verdict for c in result.cases} == {"too_few_rounds"}
    assert result.summary().startswith("NO VERDICT")
    assert any("no verdict" in n and "--rounds" in n for n in result.notes)
    mixed = gate_rounds({"a": [1.0, 1.1], "b": [1.0, 1.01, 0.99]}, {"a": [2.0, 2.1], "b": [2.0, 2.01, 1.99]})
    a, b = mixed.cases
    assert a.verdict == "too_few_rounds" and math.isnan(a.p_raw) and a.ratio == pytest.approx(2.05 / 1.05)
    assert b.verdict == "regression" and b.p_holm == pytest.approx(b.p_raw)  # Holm family holds b alone
    assert any("1 of 2 cases have fewer than 3 rounds" in n for n in mixed.notes)


def test_several_files_per_side_count_as_rounds(tmp_path, capsys):
    from attnbench.cli import main

    sides = {"a": [], "b": []}
    rng = np.random.default_rng(14)
    centers = rng.uniform(0.05, 5.0, 4)
    for i in range(4):  # four single-round runs per side, as `attnbench ab` writes them
        base, new = hierarchical_pair(rng, 4, shifts={2: 1.5}, rounds=1, centers=centers)
        sides["a"].append(write_run(tmp_path / f"a{i}.csv", base))
        sides["b"].append(write_run(tmp_path / f"b{i}.csv", new))
    result = gate(sides["a"], sides["b"])
    assert [c.key for c in result.regressions] == ["c2"] and result.cases[0].n_base == 4
    argv = ["gate", *map(str, sides["a"]), "--", *map(str, sides["b"])]
    assert main(argv) == 1
    assert "1 regressed" in capsys.readouterr().out
    assert main(["gate", str(sides["a"][0]), str(sides["b"][0])]) == 0  # one round per side: no verdict
    captured = capsys.readouterr()
    assert "NO VERDICT" in captured.out and "warning" in captured.err


def test_one_sided_cases_are_listed_not_failed(tmp_path):
    rng = np.random.default_rng(7)
    base = {"1e5": run_rounds(rng, 1.0), "old": run_rounds(rng, 1.0)}  # "1e5" must stay a string id, not 100000.0
    new = {"1e5": run_rounds(rng, 1.0), "added": run_rounds(rng, 9.0)}
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert [c.key for c in result.cases] == ["1e5"] and result.exit_code == 0
    assert [c.key for c in result.only_in_baseline] == ["old"]
    assert [(c.key, c.name) for c in result.only_in_new] == [("added", "mech1 op fwd fp32 b1 14x14")]


def test_samples_file_can_be_passed_and_last_measurement_counts(tmp_path):
    rng = np.random.default_rng(8)
    base = write_run(tmp_path / "a.csv", {"x": run_rounds(rng, 1.0, between=0.01)})
    new = write_run(tmp_path / "b.csv", {"x": run_rounds(rng, 2.0, between=0.01)})
    writer = results.ResultsWriter(new)  # every round measured again, appended: each round's last block counts
    for r in range(5):
        writer.write_samples("x", "latency", [float(v) for v in 1.0 * rng.lognormal(0, 0.01, 5)], round=r)
    writer.close()
    result = gate(results.companion(base, "samples.csv"), new)
    assert result.cases[0].n_new == 5 and result.exit_code == 0
    assert result.cases[0].ratio == pytest.approx(1.0, abs=0.2)
    assert result.baseline == str(base)


def test_pytest_benchmark_json_needs_several_runs_per_side(tmp_path):
    rng = np.random.default_rng(9)
    base_files, new_files = [], []
    centers = rng.uniform(0.05, 5.0, 4)
    for i in range(3):
        base, new = hierarchical_pair(rng, 4, shifts={2: 1.5}, rounds=1, centers=centers)
        flat = lambda run: {k: v[0] for k, v in run.items()}  # noqa: E731 - one process = one round
        base_files.append(write_benchmark_json(tmp_path / f"{i:04d}_base.json", flat(base)))
        new_files.append(write_benchmark_json(tmp_path / f"{i:04d}_new.json", flat(new)))
    result = gate(base_files, new_files)
    assert [c.key for c in result.regressions] == ["tests/test_speed.py::c2"]
    assert result.unit == "ms" and result.cases[0].n_base == 3
    with pytest.raises(GateError, match="save at least 3 runs per side"):
        gate(base_files[0], new_files[0])
    # a moved test file: no fullname matches, so cases align by name
    moved = [
        write_benchmark_json(
            tmp_path / f"m{i}.json",
            {
                k: np.array(v) * 1.5 if k == "c2" else np.array(v)
                for k, v in (
                    (b["name"], [x * 1e3 for x in b["stats"]["data"]]) for b in json.loads(f.read_text())["benchmarks"]
                )
            },
            prefix="bench/test_speed.py::",
        )
        for i, f in enumerate(base_files)
    ]
    assert [c.key for c in gate(base_files, moved).regressions] == ["c2"]


def test_parse_threshold():
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("10%") == pytest.approx(0.10)
    assert parse_threshold("0.05") == pytest.approx(0.05)
    assert parse_threshold(" 150% ") == pytest.approx(1.5)
    assert parse_threshold(0.1) == pytest.approx(0.1)


def _usage_error_cases(tmp_path: Path):
    rng = np.random.default_rng(10)
    good = write_run(tmp_path / "good.csv", {"x": run_rounds(rng, 1.0)})
    other = write_run(tmp_path / "other.csv", {"y": run_rounds(rng, 1.0)})
    orphan = tmp_path / "orphan.csv"
    orphan.write_text(good.read_text())
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    no_data = write_benchmark_json(tmp_path / "nodata.json", {"x": rng.lognormal(0, 0.01, 20)})
    doc = json.loads(no_data.read_text())
    for bench in doc["benchmarks"]:
        del bench["stats"]["data"]
    no_data.write_text(json.dumps(doc))
    bench = write_benchmark_json(tmp_path / "bench.json", {"x": rng.lognormal(0, 0.01, 20)})
    return {
        "missing file": ((tmp_path / "nope.csv", good), {}, "not found"),
        "no samples file": ((orphan, good), {}, "orphan.samples.csv"),
        "unreadable json": ((bad_json, bench), {}, "cannot read"),
        "json without data": ((bench, no_data), {}, "--benchmark-save-data"),
        "no common cases": ((good, other), {}, "no case is in both"),
        "mixed kinds": ((good, bench), {}, "same kind"),
        "unknown metric": ((good, good), {"metric": "flops"}, "--metric"),
        "json metric": ((bench, bench), {"metric": "throughput"}, "--metric latency"),
        "threshold not a number": ((good, good), {"threshold": "five"}, "5%"),
        "threshold without percent": ((good, good), {"threshold": "5"}, "5%"),
        "negative threshold": ((good, good), {"threshold": "-1%"}, "non-negative"),
        "bad alpha": ((good, good), {"alpha": 1.5}, "alpha"),
        "one json per side": ((bench, bench), {}, "save at least 3 runs per side"),
        "min_rounds of 1": ((good, good), {"min_rounds": 1}, "at least 2"),
    }


def test_usage_errors_are_one_line(tmp_path):
    for label, ((a, b), kwargs, fragment) in _usage_error_cases(tmp_path).items():
        with pytest.raises(GateError) as info:
            gate(a, b, **kwargs)
        message = str(info.value)
        assert isinstance(info.value, AttnbenchError) and info.value.exit_code == 2, label
        assert "\n" not in message and fragment in message, (label, message)


def test_run_wide_shift_is_removed_before_judging():
    """Two runs minutes apart can differ as a whole (+20 % on every case); the case slowed by 30 % on top of that
    is named, the others are not. --absolute judges as measured and flags them all."""
    rng = np.random.default_rng(16)
    base, new = hierarchical_pair(rng, 24, shifts={i: (1.3 if i == 5 else 1.0) * 1.2 for i in range(24)})
    result = gate_rounds(medians(base), medians(new))
    assert [c.key for c in result.regressions] == ["c5"]
    assert result.run_shift == pytest.approx(0.2, abs=0.04)
    assert result.cases[5].vs_run == pytest.approx(0.3, abs=0.08)
    assert any("run-wide shift +" in n for n in result.notes)
    absolute = gate_rounds(medians(base), medians(new), absolute=True)
    assert len(absolute.regressions) > 12 and absolute.run_shift == 0.0
    few = gate_rounds({k: medians(base)[k] for k in ("c0", "c1")}, {k: medians(new)[k] for k in ("c0", "c1")})
    assert few.run_shift == 0.0 and any("no run-wide shift removed" in n for n in few.notes)
