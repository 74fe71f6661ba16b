"""analysis: crossovers, scaling exponents, Pareto fronts, speedups and pivots against closed-form truths."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attnbench import analysis, results, stats, tables

N = np.array([49, 196, 784, 3136, 12544], dtype=float)  # 7x7 .. 112x112


def case_rows(
    mech: str,
    h: int,
    median: float | None,
    *,
    p20: float | None = None,
    p80: float | None = None,
    level: str = "op",
    pass_: str = "fwd",
    batch: int = 1,
    device: str = "cpu",
    status: str = "ok",
    memory: float | None = None,
    variant: str = "",
) -> list[dict]:
    """Result rows of one square-grid case (the runner's columns; case_id from the identity)."""
    base = dict(
        schema_version=1,
        run_id="r",
        suite="synthetic",
        mechanism=mech,
        family=mech.split("_")[0],
        backend="torch",
        level=level,
        variant=variant,
        device=device,
        dtype="fp32",
        batch=batch,
        height=h,
        width=h,
        tokens=h * h,
        heads=1,
        head_dim=64,
        dim=64,
        source="measured",
        note="",
        env_id="e1",
        message="",
        started_at="2025-01-01T00:00:00",
        status=status,
        unit="ms",
        metric="latency",
    )
    base["pass"] = pass_
    base["case_id"] = f"{mech}-{level}-{variant}-{pass_}-{device}-{batch}-{h}"
    if status != "ok" or median is None:
        return [dict(base, value=None, stat="value", message=f"{status} here")]
    rows = [dict(base, value=median, stat="median")]
    rows += [dict(base, value=v, stat=s) for s, v in (("p20", p20), ("p80", p80)) if v is not None]
    if memory is not None:
        rows.append(dict(base, metric="peak_memory", value=memory, stat="value", unit="B", note="synthetic"))
    return rows


def frame(rows: list[dict], tmp_path, name: str = "run.csv") -> pd.DataFrame:
    """Rows through the real writer and loader, so dtypes match `results.load`."""
    writer = results.ResultsWriter(tmp_path / name)
    writer.write_rows(rows)
    writer.close()
    return results.load(tmp_path / name)


# -- crossovers --------------------------------------------------------------------------------------------
def test_crossover_closed_form_linear_vs_quadratic():
    a, b = 0.5, 1e-3  # lat_A = a N, lat_B = b N^2 -> equal at N* = a / b = 500, B faster below
    found = analysis.find_crossovers(N, a * N, b * N**2)
    assert len(found) == 1
    c = found[0]
    assert c.tokens == pytest.approx(a / b, rel=1e-9)
    assert c.lower == pytest.approx((196, a * 196, b * 196**2))
    assert c.upper == pytest.approx((784, a * 784, b * 784**2))
    assert c.faster_below == "b"


def test_crossover_none_in_range_and_unsorted_input():
    assert analysis.find_crossovers(N[::-1], 1e-6 * N[::-1], 1e-3 * N[::-1] ** 2) == []
    # two power laws with different prefactors and exponents: N* = (a/b)^(1/(q-p)) interpolates exactly
    a, p, b, q = 0.3, 1.0, 0.01, 1.5
    (c,) = analysis.find_crossovers(N, a * N**p, b * N**q)
    assert c.tokens == pytest.approx((a / b) ** (1 / (q - p)), rel=1e-9)  # 900, between 784 and 3136
    assert (c.lower[0], c.upper[0], c.faster_below) == (784, 3136, "b")


def test_crossovers_per_group(tmp_path):
    a, b = 0.5, 1e-3
    rows = []
    for n_side in (7, 14, 28, 56, 112):
        n = n_side * n_side
        rows += case_rows("linear_x", n_side, a * n) + case_rows("quad_y", n_side, b * n * n)
        rows += case_rows("linear_x", n_side, 1e-6 * n, pass_="fwd_bwd") + case_rows(
            "quad_y", n_side, b * n * n, pass_="fwd_bwd"
        )
    rows += case_rows("linear_x", 14, 1.0, batch=8) + case_rows("quad_y", 14, 2.0, batch=8)
    rows += case_rows("quad_y", 28, None, status="oom", batch=8)
    cross = analysis.crossovers(frame(rows, tmp_path), "linear_x", "quad_y")
    by_pass = {(r["pass"], r["batch"]): r for _, r in cross.iterrows()}
    hit = by_pass[("fwd", 1)]
    assert hit["result"] == "crossover" and hit["tokens"] == pytest.approx(500, rel=1e-9)
    assert (hit["faster_below"], hit["faster_above"]) == ("quad_y", "linear_x")
    assert (hit["lo_tokens"], hit["hi_tokens"]) == (196, 784)
    assert hit["lo_a"] == pytest.approx(a * 196) and hit["hi_b"] == pytest.approx(b * 784**2)
    none = by_pass[("fwd_bwd", 1)]
    assert none["result"] == "none_in_range" and none["faster"] == "linear_x" and none["crossings"] == 0
    assert by_pass[("fwd", 8)]["result"] == "too_few_points"
    with pytest.raises(analysis.AnalysisError, match="no ok latency rows"):
        analysis.crossovers(frame(rows, tmp_path, "b.csv"), "linear_x", "missing_mech")


def test_crossover_of_rala_and_neighborhood_across_their_variants(tmp_path):
    """RALA (linear in N) against a neighborhood whose kernel is not the default (variant "kernel=5"): the
    curves meet although the variants differ; at model level only the same model's curves meet."""
    a, b = 0.5, 1e-3  # rala = a N, neighborhood = b N^2 (a stand-in curve): N* = 500, the neighborhood faster below
    rows = []
    for n_side in (7, 14, 28, 56):
        n = n_side * n_side
        rows += case_rows("rala_eager", n_side, a * n, level="mixer")
        rows += case_rows("neighborhood", n_side, b * n * n, level="mixer", variant="kernel=5")
        rows += case_rows("neighborhood", n_side, 2 * b * n * n, level="mixer", variant="kernel=9")
        for model, scale in (("ravlt_t", 1.0), ("ravlt_s", 2.0)):
            rows += case_rows("rala_eager", n_side, scale * a * n, level="model", variant=model)
            rows += case_rows("neighborhood", n_side, b * n * n, level="model", variant=model)
    cross = analysis.crossovers(frame(rows, tmp_path), "rala_eager", "neighborhood")
    mixer = cross[cross["level"] == "mixer"].set_index("variant_b")
    assert set(mixer.index) == {"kernel=5", "kernel=9"} and set(mixer["variant_a"]) == {""}
    assert mixer.loc["kernel=5", "tokens"] == pytest.approx(a / b, rel=1e-9)  # 500, between 196 and 784
    assert mixer.loc["kernel=9", "tokens"] == pytest.approx(a / (2 * b), rel=1e-9)
    assert mixer.loc["kernel=5", "variant"] == "A default, B kernel=5"
    assert (mixer.loc["kernel=5", "faster_below"], mixer.loc["kernel=5", "faster_above"]) == (
        "neighborhood",
        "rala_eager",
    )
    model = cross[cross["level"] == "model"].set_index("variant")
    assert sorted(model.index) == ["ravlt_s", "ravlt_t"]  # never ravlt_t against ravlt_s
    assert model.loc["ravlt_t", "tokens"] == pytest.approx(a / b, rel=1e-9)
    assert model.loc["ravlt_s", "tokens"] == pytest.approx(2 * a / b, rel=1e-9)
    table = tables.crossover_table(cross)
    assert any(label.startswith("mixer A default, B kernel=5 fwd") for label in table.frame.index)


# -- scaling exponents -------------------------------------------------------------------------------------
@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_power_law_recovers_slope_with_ci(exponent):
    rng = np.random.default_rng(7)
    n = np.geomspace(64, 65536, 14)
    values = 3e-4 * n**exponent * np.exp(rng.normal(0, 0.08, n.size))  # 8% multiplicative noise
    fit = stats.fit_power_law(n, values)
    assert fit.ci_low < exponent < fit.ci_high
    assert fit.ci_high - fit.ci_low < 0.2
    assert fit.r2 > 0.99 and fit.n == n.size
    exact = stats.fit_power_law(n, 5 * n**exponent)
    assert exact.exponent == pytest.approx(exponent) and exact.prefactor == pytest.approx(5)


def test_power_law_ci_uses_t_distribution():
    # residuals +-e around slope 1 at x = 0, 1, 2, 3 (log space): closed-form OLS standard error
    x = np.log(np.array([1.0, math.e, math.e**2, math.e**3]))
    e = 0.1
    y = x + np.array([e, -e, -e, e])
    fit = stats.fit_power_law(np.exp(x), np.exp(y))
    se = math.sqrt((4 * e**2 / 2) / 5.0)  # s^2 = SSE / (n - 2), Sxx = 5
    half = 4.302652729911275 * se  # t_{0.975, 2}
    assert fit.exponent == pytest.approx(1.0)
    assert (fit.ci_low, fit.ci_high) == pytest.approx((1 - half, 1 + half))


def test_scaling_exponents_min_tokens_drops_overhead(tmp_path):
    rows = []
    for side in (4, 7, 14, 28, 56, 112, 224):
        n = side * side
        rows += case_rows("quad_y", side, 10.0 + 1e-4 * n**2, memory=4.0 * n)  # launch overhead dominates small N
    df = frame(rows, tmp_path)
    all_points = analysis.scaling_exponents(df)
    big = analysis.scaling_exponents(df, min_tokens=3136)
    lat_all = all_points[all_points["metric"] == "latency"].iloc[0]
    lat_big = big[big["metric"] == "latency"].iloc[0]
    assert lat_all["exponent"] < 1.5 and lat_all["n_points"] == 7
    assert lat_big["exponent"] == pytest.approx(2.0, abs=0.1) and lat_big["tokens_min"] == 3136
    mem = big[big["metric"] == "peak_memory"].iloc[0]
    assert mem["exponent"] == pytest.approx(1.0) and mem["r2"] == pytest.approx(1.0)


# -- Pareto --------------------------------------------------------------------------------------------------
def test_pareto_mask_hand_made():
    acc = [80, 82, 81, 85, 79, 82, 84, float("nan")]
    cost = [1.0, 2.0, 3.0, 5.0, 0.5, 2.0, 5.0, 0.1]
    # 81@3 is beaten by 82@2; 84@5 by 85@5; the duplicate 82@2 points keep each other; NaN is never on it
    assert analysis.pareto_mask(acc, cost).tolist() == [True, True, False, True, True, True, False, False]


def test_pareto_front_prefers_measured_accuracy(tmp_path):
    def model_rows(variant: str, metric: str, value: float, source: str = "measured", stat: str = "value"):
        (row,) = case_rows("rala_eager", 224, 1.0, level="model", variant=variant, batch=64)[:1]
        return dict(row, metric=metric, value=value, source=source, stat=stat, unit="")

    rows = [
        model_rows("t", "top1", 82.8, "reported"),
        model_rows("t", "top1", 82.5),
        model_rows("s", "top1", 84.4, "reported"),
        model_rows("b", "top1", 84.0, "reported"),
        model_rows("t", "latency", 10.0, stat="median"),
        model_rows("s", "latency", 20.0, stat="median"),
        model_rows("b", "latency", 40.0, stat="median"),
    ]
    front = analysis.pareto_front(frame(rows, tmp_path), "latency")
    got = {r["variant"]: (r["accuracy"], r["accuracy_source"], r["on_front"]) for _, r in front.iterrows()}
    assert got == {"t": (82.5, "measured", True), "s": (84.4, "reported", True), "b": (84.0, "reported", False)}
    assert front["cost"].tolist() == [10.0, 20.0, 40.0]


# -- speedup and pivots --------------------------------------------------------------------------------------
def test_speedup_band_and_bootstrap(tmp_path):
    rows = case_rows("base_m", 14, 2.0, p20=1.8, p80=2.2) + case_rows("fast_m", 14, 1.0, p20=0.9, p80=1.1)
    df = frame(rows, tmp_path)
    sp = analysis.speedup(df, "base_m").set_index("mechanism")
    assert sp.at["fast_m", "speedup"] == pytest.approx(2.0) and sp.at["base_m", "speedup"] == 1.0
    up = math.hypot(math.log(2.2 / 2.0), math.log(1.0 / 0.9))  # baseline up, mechanism down
    down = math.hypot(math.log(2.0 / 1.8), math.log(1.1 / 1.0))
    assert sp.at["fast_m", "high"] == pytest.approx(2.0 * math.exp(up))
    assert sp.at["fast_m", "low"] == pytest.approx(2.0 * math.exp(-down))
    assert sp.at["fast_m", "interval"] == "p20-p80"

    rng = np.random.default_rng(1)
    samples = pd.DataFrame(
        [
            {"case_id": f"{m}-op--fwd-cpu-1-14", "metric": "latency", "rep": i, "value": v}
            for m, med in (("base_m", 2.0), ("fast_m", 1.0))
            for i, v in enumerate(med * rng.uniform(0.95, 1.05, 41))
        ]
    )
    boot = analysis.speedup(df, "base_m", samples=samples).set_index("mechanism")
    assert boot.at["fast_m", "interval"] == "95% bootstrap CI"
    assert boot.at["fast_m", "low"] < 2.0 < boot.at["fast_m", "high"]
    again = analysis.speedup(df, "base_m", samples=samples).set_index("mechanism")
    assert again.at["fast_m", "low"] == boot.at["fast_m", "low"]  # seeded
    with pytest.raises(analysis.AnalysisError, match="baseline 'nope'"):
        analysis.speedup(df, "nope")


def test_pivot_tables_numbers_status_and_axis(tmp_path):
    rows = []
    for side, lat in ((7, 0.5), (14, 1.5)):
        rows += case_rows("m1", side, lat, p20=lat * 0.9, p80=lat * 1.2, memory=2 * 2**20)
    rows += case_rows("m2", 7, 0.25) + case_rows("m2", 14, None, status="oom")
    (lat,) = analysis.pivot_tables(frame(rows, tmp_path), "latency")
    assert list(lat.values.columns) == ["7x7", "14x14"] and list(lat.values.index) == ["m1", "m2"]
    assert lat.values.at["m1", "14x14"] == 1.5 and lat.low.at["m1", "14x14"] == pytest.approx(1.35)
    assert math.isnan(lat.values.at["m2", "14x14"]) and lat.status.at["m2", "14x14"] == "oom"
    assert lat.unit == "ms" and lat.interval == "p20-p80" and lat.group["batch"] == 1
    (mem,) = analysis.pivot_tables(frame(rows, tmp_path, "m.csv"), "peak_memory")
    assert mem.unit == "MiB" and mem.values.at["m1", "7x7"] == pytest.approx(2.0)

    by_batch = sum((case_rows("m1", 28, 1.0 * b, batch=b) for b in (1, 4, 16)), [])
    (tab,) = analysis.pivot_tables(frame(by_batch, tmp_path, "b.csv"), "latency")
    assert tab.axis == "batch" and list(tab.values.columns) == ["batch 1", "batch 4", "batch 16"]


# -- table rows ---------------------------------------------------------------------------------------------
def test_pivot_rows_by_family_then_name_and_mechanisms_without_values_last(tmp_path):
    """A run shuffles its cases, so the file's row order is random: tables must not follow it."""
    rows = case_rows("softmax_sdpa", 7, 1.0) + case_rows("flash_gpu", 7, None, status="skipped")
    rows += case_rows("rala_eager", 7, 2.0) + case_rows("linear_elu", 7, 3.0) + case_rows("rala_compiled", 7, 0.5)
    for order in (rows, rows[::-1]):
        (table,) = analysis.pivot_tables(
            frame(order, tmp_path, f"run{len(order)}-{order[0]['mechanism']}.csv"), "latency"
        )
        assert list(table.values.index) == ["linear_elu", "rala_compiled", "rala_eager", "softmax_sdpa", "flash_gpu"]
