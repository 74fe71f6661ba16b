"""compare: two synthetic runs aligned by case identity, ratios B/A with intervals, one-sided cases, envs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnbench import compare, export, results


def case_rows(
    mech: str, h: int, median: float | None, *, device: str = "cuda", status: str = "ok", env_id: str = "envA"
) -> list[dict]:
    base = dict(
        schema_version=1,
        run_id="r",
        suite="synthetic",
        mechanism=mech,
        family="f",
        backend="torch",
        level="op",
        variant="",
        device=device,
        dtype="bf16",
        batch=8,
        height=h,
        width=h,
        tokens=h * h,
        heads=2,
        head_dim=32,
        dim=64,
        source="measured",
        note="",
        env_id=env_id,
        message="",
        started_at="2025-01-01T00:00:00",
        status=status,
        unit="ms",
        metric="latency",
        case_id=f"{mech}-{device}-{h}",
    )
    base["pass"] = "fwd"
    if status != "ok":
        return [dict(base, value=None, stat="value", message="CUDA out of memory")]
    return [
        dict(base, value=v, stat=s)
        for s, v in (("median", median), ("p20", 0.9 * median), ("p80", 1.1 * median), ("n", 31.0))
    ]


def write_run(path, rows, samples: dict[str, np.ndarray] | None, env: dict) -> None:
    writer = results.ResultsWriter(path)
    writer.write_rows(rows)
    for case_id, values in (samples or {}).items():
        writer.write_samples(case_id, "latency", list(values))
    writer.write_env(env["id"], env["fp"])
    writer.close()


def env(env_id: str, gpu: str, commit: str) -> dict:
    return {
        "id": env_id,
        "fp": {
            "device": "cuda",
            "gpu_name": gpu,
            "cpu_model": "Xeon",
            "git_commit": commit,
            "git_dirty": False,
            "versions": {"torch": "2.11.0"},
            "cuda_version": "13.0",
        },
    }


@pytest.fixture
def runs(tmp_path):
    """A: cases x (14, 28) and only_a (14); B (another GPU, other case_ids): x twice as fast, y oom, only_b."""
    rng = np.random.default_rng(3)
    medians = {("x", 14): 1.0, ("x", 28): 4.0, ("y", 14): 2.0, ("only_a", 14): 1.0}
    rows_a = sum((case_rows(m, h, v, env_id="envA") for (m, h), v in medians.items()), [])
    samples_a = {f"{m}-cuda-{h}": v * rng.uniform(0.97, 1.03, 31) for (m, h), v in medians.items()}
    rows_b = case_rows("x", 14, 0.5, device="gpu1", env_id="envB") + case_rows(
        "x", 28, 2.0, device="gpu1", env_id="envB"
    )
    rows_b += case_rows("y", 14, None, status="oom", device="gpu1", env_id="envB")
    rows_b += case_rows("only_b", 14, 3.0, device="gpu1", env_id="envB")
    samples_b = {f"x-gpu1-{h}": v * rng.uniform(0.97, 1.03, 31) for h, v in ((14, 0.5), (28, 2.0))}
    samples_b["only_b-gpu1-14"] = np.full(31, 3.0)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_run(a, rows_a, samples_a, env("envA", "NVIDIA H100 80GB HBM3", "1111111111111111"))
    write_run(b, rows_b, samples_b, env("envB", "NVIDIA H200", "2222222222222222"))
    return a, b


def test_compare_aligns_by_identity_and_computes_ratios(runs):
    frame, meta = compare.compare_runs(*runs, across_hardware=True)
    by = {(r["mechanism"], r["height"]): r for _, r in frame.iterrows()}
    assert set(by) == {("x", 14), ("x", 28), ("y", 14), ("only_a", 14), ("only_b", 14)}
    for h in (14, 28):
        r = by[("x", h)]
        assert r["presence"] == "both" and r["ratio"] == pytest.approx(0.5)
        assert r["interval"] == "95% bootstrap CI" and r["low"] < 0.5 < r["high"] and r["high"] / r["low"] < 1.1
        assert r["case_id_a"] != r["case_id_b"]  # device differs, identity matches
    assert by[("y", 14)]["status_b"] == "oom" and math.isnan(by[("y", 14)]["ratio"])
    assert by[("only_a", 14)]["presence"] == "only_a" and by[("only_b", 14)]["presence"] == "only_b"
    assert math.isnan(by[("only_b", 14)]["ratio"]) and by[("only_b", 14)]["median_b"] == 3.0
    assert list(frame["presence"]) == ["both", "both", "both", "only_a", "only_b"]  # A's order, then B's extras
    assert (meta.n_both, meta.n_ratio, meta.n_only_a, meta.n_only_b) == (3, 2, 1, 1)
    assert meta.geomean_ratio == pytest.approx(0.5) and meta.unit == "ms"
    assert {f.name for f in meta.env_differences} == {"device", "git commit"}
    device = next(f for f in meta.env if f.name == "device")
    assert (device.a, device.b) == ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
    again, _ = compare.compare_runs(*runs, across_hardware=True)
    assert again["low"].equals(frame["low"])  # seeded bootstrap


def test_compare_without_samples_uses_p20_p80_band(runs):
    a, b = runs
    results.companion(b, "samples.csv").unlink()
    frame, meta = compare.compare_runs(a, b, across_hardware=True)
    r = frame[(frame["mechanism"] == "x") & (frame["height"] == 14)].iloc[0]
    half = math.hypot(math.log(1.1), math.log(1 / 0.9))  # up: B's p80 and A's p20
    assert r["interval"] == "p20-p80" and r["high"] == pytest.approx(0.5 * math.exp(half))
    assert any("no samples file" in n for n in meta.notes)


def test_comparison_tables_render(runs):
    frame, meta = compare.compare_runs(*runs, across_hardware=True)
    cases, env_table = compare.comparison_tables(frame, meta)
    md = export.to_markdown(cases)
    assert "| x op fwd bf16 b8 14x14 | 1 | 0.5 | 0.5 [" in md
    assert "only in B" in md and "oom" in md
    assert env_table.frame.loc["git commit", "differs"] == "*" and env_table.frame.loc["torch", "differs"] == ""
    assert r"\toprule" in export.to_latex(env_table)
    assert "2 of 3 common cases compared" in meta.summary()


def test_duplicate_identities_are_noted(tmp_path, runs):
    a, b = runs
    rows = case_rows("x", 14, 1.0, device="cpu") + case_rows("x", 14, 9.0, device="cuda")
    write_run(tmp_path / "dup.csv", rows, None, env("envA", "H100", "1"))
    frame, meta = compare.compare_runs(tmp_path / "dup.csv", b, across_hardware=True)
    assert frame.loc[frame["mechanism"] == "x", "median_a"].iloc[0] == 9.0  # the later one
    assert any("share an identity" in n for n in meta.notes)


def test_runs_on_different_hardware_are_refused_unless_asked(runs, tmp_path):
    from attnbench.cli import main

    a, b = runs
    with pytest.raises(results.ResultsError, match="across-hardware"):
        compare.compare_runs(a, b)
    assert main(["compare", str(a), str(b)]) == 2
    assert main(["compare", str(a), str(b), "--across-hardware"]) == 0
    frame, meta = compare.compare_runs(a, a)  # same hardware: no flag needed
    assert meta.n_ratio == 4  # every ok case of A against itself
