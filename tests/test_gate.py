"""Regression gate: verdicts on synthetic runs with known shifts, Holm against hand-computed values,
exact Mann-Whitney p-values against combinatorics, input formats and one-line usage errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from attnbench import results
from attnbench.errors import AttnbenchError
from attnbench.gate import GateError, format_rows, gate, gate_samples, holm, parse_threshold

SIGMA = 0.03  # lognormal timing noise


def noisy(rng: np.random.Generator, center: float, n: int = 20, sigma: float = SIGMA) -> np.ndarray:
    return center * rng.lognormal(0.0, sigma, n)


def write_run(path: Path, samples: dict[str, np.ndarray], metric: str = "latency", unit: str = "ms") -> Path:
    """A results CSV (one median row per case) plus FILE.samples.csv, written by the real writer."""
    writer = results.ResultsWriter(path)
    for i, (case_id, values) in enumerate(samples.items()):
        row = {c: "" for c in results.COLUMNS} | {
            "schema_version": 1, "run_id": "r", "case_id": case_id, "suite": "s", "mechanism": f"mech{i}",
            "level": "op", "pass": "fwd", "device": "cpu", "dtype": "fp32", "batch": 1, "height": 14, "width": 14,
            "metric": metric, "value": float(np.median(values)), "unit": unit, "stat": "median", "status": "ok",
            "source": "measured",
        }  # fmt: skip
        writer.write_rows([row])
        writer.write_samples(case_id, metric, [float(v) for v in values])
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


def suite(rng: np.random.Generator, n_cases: int, shifts: dict[int, float] | None = None, n: int = 20):
    """Baseline and new samples for case ids c0..; case i of new scaled by shifts[i]."""
    shifts = shifts or {}
    centers = rng.uniform(0.5, 5.0, n_cases)
    base = {f"c{i}": noisy(rng, centers[i], n) for i in range(n_cases)}
    new = {f"c{i}": noisy(rng, centers[i] * shifts.get(i, 1.0), n) for i in range(n_cases)}
    return base, new


def test_no_change_passes(tmp_path):
    base, new = suite(np.random.default_rng(1), 6)
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert result.exit_code == 0 and result.passed
    assert {c.verdict for c in result.cases} == {"unchanged"}
    assert result.unit == "ms" and result.metric == "latency"
    assert result.summary().startswith("PASS: 6 cases compared")
    assert list(result.to_frame()["key"]) == [f"c{i}" for i in range(6)]


def test_20pct_slowdown_fails_naming_the_case(tmp_path):
    base, new = suite(np.random.default_rng(2), 8, shifts={3: 1.2})
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert result.exit_code == 1
    [reg] = result.regressions
    assert reg.key == "c3" and reg.name == "mech3 op fwd fp32 b1 14x14"
    assert reg.change == pytest.approx(0.2, abs=0.04)
    assert reg.ci_low < 1.2 < reg.ci_high
    assert reg.p_holm <= 0.05
    assert format_rows(result)[0]["id"] == "c3" and format_rows(result)[0]["verdict"] == "regression"


def test_pure_noise_over_50_cases_passes_at_least_95pct_of_trials():
    rng = np.random.default_rng(3)
    trials = 40
    outcomes = [gate_samples(*suite(rng, 50), n_boot=50) for _ in range(trials)]
    assert sum(r.passed for r in outcomes) >= 0.95 * trials
    # Holm alone (no threshold) keeps family-wise false alarms near alpha, where raw p-values flag
    # a case in 1 - 0.95**50 = 92% of noise-only suites.
    strict = [gate_samples(*suite(rng, 50), threshold=0, n_boot=50) for _ in range(trials)]
    assert sum(r.passed for r in strict) >= 0.85 * trials
    assert sum(any(c.p_raw <= 0.05 for c in r.cases) for r in strict) >= 0.75 * trials


def test_speedup_is_an_improvement_and_passes(tmp_path):
    base, new = suite(np.random.default_rng(4), 5, shifts={1: 0.8})
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert result.exit_code == 0
    assert [c.key for c in result.improvements] == ["c1"]
    assert result.improvements[0].change == pytest.approx(-0.2, abs=0.04)


def test_threshold_is_respected():
    rng = np.random.default_rng(5)
    base = {"x": noisy(rng, 1.0, 40, sigma=0.005)}
    new = {"x": noisy(rng, 1.03, 40, sigma=0.005)}
    at_5 = gate_samples(base, new, threshold="5%")
    [case] = at_5.cases
    assert case.p_holm < 1e-6 and case.change == pytest.approx(0.03, abs=0.005)  # significant, below threshold
    assert case.verdict == "unchanged" and at_5.exit_code == 0
    assert gate_samples(base, new, threshold="2%").exit_code == 1


def test_higher_is_better_metric_regresses_when_it_drops():
    rng = np.random.default_rng(6)
    base, new = {"x": noisy(rng, 100.0)}, {"x": noisy(rng, 80.0)}
    assert gate_samples(base, new, metric="throughput").regressions[0].key == "x"
    assert gate_samples(new, base, metric="throughput").improvements[0].key == "x"


def test_holm_matches_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 0.5 x 2 capped at 1
    np.testing.assert_allclose(holm([0.01, math.nan, 0.02]), [0.02, math.nan, 0.02])  # NaN not counted
    assert holm([]).shape == (0,)


@pytest.mark.parametrize(("n_cases", "verdict"), [(6, "regression"), (10, "unchanged")])
def test_holm_is_applied_across_cases(n_cases, verdict):
    # 5 vs 5 samples, completely separated: exact two-sided p = 2 / C(10, 5) = 2/252.
    # Holm over k cases (the others have p = 1) gives k * 2/252: 0.048 for k = 6, 0.079 for k = 10.
    base = {f"c{i}": [1.0, 1.1, 1.2, 1.3, 1.4] for i in range(n_cases)}
    new = {f"c{i}": [1.0, 1.1, 1.2, 1.3, 1.4] for i in range(n_cases)}
    new["c0"] = [2.0, 2.1, 2.2, 2.3, 2.4]
    result = gate_samples(base, new)
    case = result.cases[0]
    assert case.p_raw == pytest.approx(2 / 252)
    assert case.p_holm == pytest.approx(n_cases * 2 / 252)
    assert case.verdict == verdict


def test_too_few_samples_are_marked_and_never_fail():
    base = {"a": [1.0, 1.01, 0.99], "b": [1.0, 1.01, 0.99, 1.02, 0.98]}
    new = {"a": [2.0, 2.01, 1.99], "b": [2.0, 2.01, 1.99, 2.02, 1.98]}
    result = gate_samples(base, new)
    a, b = result.cases
    assert a.verdict == "too_few_samples" and math.isnan(a.p_raw) and a.ratio == pytest.approx(2.0)
    assert b.verdict == "regression" and b.p_holm == pytest.approx(2 / 252)  # Holm family holds b alone
    assert any("fewer than 5 samples" in note for note in result.notes)
    only_few = gate_samples({"a": base["a"]}, {"a": new["a"]})
    assert only_few.exit_code == 0 and only_few.cases[0].verdict == "too_few_samples"


def test_underpowered_suite_is_noted():
    base = {f"c{i}": [1.0, 1.1, 1.2, 1.3, 1.4] for i in range(20)}  # min p 2/252 * 20 > 0.05
    assert any("record more repeats" in note for note in gate_samples(base, base).notes)


def test_one_sided_cases_are_listed_not_failed(tmp_path):
    rng = np.random.default_rng(7)
    base = {"1e5": noisy(rng, 1.0), "old": noisy(rng, 1.0)}  # "1e5" must stay a string id, not 100000.0
    new = {"1e5": noisy(rng, 1.0), "added": noisy(rng, 9.0)}
    result = gate(write_run(tmp_path / "a.csv", base), write_run(tmp_path / "b.csv", new))
    assert [c.key for c in result.cases] == ["1e5"] and result.exit_code == 0
    assert [c.key for c in result.only_in_baseline] == ["old"]
    assert [(c.key, c.name) for c in result.only_in_new] == [("added", "mech1 op fwd fp32 b1 14x14")]


def test_samples_file_can_be_passed_and_last_measurement_counts(tmp_path):
    rng = np.random.default_rng(8)
    base = write_run(tmp_path / "a.csv", {"x": noisy(rng, 1.0)})
    new = write_run(tmp_path / "b.csv", {"x": noisy(rng, 2.0)})
    writer = results.ResultsWriter(new)  # the case measured again, appended: its last block of repeats counts
    writer.write_samples("x", "latency", [float(v) for v in noisy(rng, 1.0)])
    writer.close()
    result = gate(results.companion(base, "samples.csv"), new)
    assert result.cases[0].n_new == 20 and result.exit_code == 0
    assert result.baseline == str(base)


def test_pytest_benchmark_json(tmp_path):
    rng = np.random.default_rng(9)
    base, new = suite(rng, 4, shifts={2: 1.25})
    a = write_benchmark_json(tmp_path / "0001_base.json", base)
    result = gate(a, write_benchmark_json(tmp_path / "0002_new.json", new))
    assert [c.key for c in result.regressions] == ["tests/test_speed.py::c2"]
    assert result.unit == "ms" and result.cases[0].median_base == pytest.approx(np.median(base["c0"]))
    # a moved test file: no fullname matches, so cases align by name
    moved = gate(a, write_benchmark_json(tmp_path / "0003_moved.json", new, prefix="bench/test_speed.py::"))
    assert [c.key for c in moved.regressions] == ["c2"]


def test_parse_threshold():
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("10%") == pytest.approx(0.10)
    assert parse_threshold("0.05") == pytest.approx(0.05)
    assert parse_threshold(" 150% ") == pytest.approx(1.5)
    assert parse_threshold(0.1) == pytest.approx(0.1)


def _usage_error_cases(tmp_path: Path):
    rng = np.random.default_rng(10)
    good = write_run(tmp_path / "good.csv", {"x": noisy(rng, 1.0)})
    other = write_run(tmp_path / "other.csv", {"y": noisy(rng, 1.0)})
    orphan = tmp_path / "orphan.csv"
    orphan.write_text(good.read_text())
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    no_data = write_benchmark_json(tmp_path / "nodata.json", {"x": noisy(rng, 1.0)})
    doc = json.loads(no_data.read_text())
    for bench in doc["benchmarks"]:
        del bench["stats"]["data"]
    no_data.write_text(json.dumps(doc))
    bench = write_benchmark_json(tmp_path / "bench.json", {"x": noisy(rng, 1.0)})
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
    }


def test_usage_errors_are_one_line(tmp_path):
    for label, ((a, b), kwargs, fragment) in _usage_error_cases(tmp_path).items():
        with pytest.raises(GateError) as info:
            gate(a, b, **kwargs)
        message = str(info.value)
        assert isinstance(info.value, AttnbenchError) and info.value.exit_code == 2, label
        assert "\n" not in message and fragment in message, (label, message)
