"""Measured peaks: a quick CPU probe, the size/skip rule, the per-environment cache, fractions."""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch

from attnbench.measure import peaks
from attnbench.measure.env import fingerprint


@pytest.fixture(scope="module")
def quick_cpu():
    """One quick fp32 probe shared by the tests below (about a second on 2 cores)."""
    fp = fingerprint("cpu")
    return peaks.probe("cpu", dtypes=("fp32",), quick=True, fp=fp), fp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _median_seconds(fn, reps: int = 15) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_quick_probe_measures_with_units(quick_cpu):
    """The probe's GB/s and TFLOP/s agree with the same operations timed here with a stopwatch (read + write of
    the buffer; 2 n^3 FLOPs of an n x n matmul) within 4x either way: a slip of units (1e3), of the time base or
    of the work counted fails, while the noise of a shared CPU between the two measurements passes."""
    result, fp = quick_cpu
    copy, mm = result["copy"], result["matmul"]["fp32"]
    assert finite_positive(copy["value"]) and copy["unit"] == "GB/s"
    assert copy["buffer_bytes"] == peaks.QUICK_COPY_BYTES["cpu"]
    src = torch.ones(copy["buffer_bytes"] // 4)  # float32
    dst = torch.empty_like(src)
    stopwatch_gbps = 2 * src.numel() * 4 / _median_seconds(lambda: dst.copy_(src)) / 1e9
    assert 0.25 <= copy["value"] / stopwatch_gbps <= 4, (copy["value"], stopwatch_gbps)
    assert finite_positive(mm["value"]) and mm["unit"] == "TFLOP/s"
    n = mm["size"]
    assert 0 < n <= peaks.QUICK_MATMUL_N["cpu"]
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    stopwatch_tflops = 2 * n**3 / _median_seconds(lambda: torch.mm(a, b, out=c)) / 1e12
    assert 0.25 <= mm["value"] / stopwatch_tflops <= 4, (mm["value"], stopwatch_tflops)
    assert copy["repeats"] >= peaks.POLICY[True].min and mm["repeats"] >= peaks.POLICY[True].min
    assert result["quick"] and "TF32 off" in result["settings"]["fp32_matmul"]
    assert result["key"] == peaks.peaks_key(fp) and result["fingerprint"] == fp
    assert torch.get_float32_matmul_precision() == fp["float32_matmul_precision"]  # restored
    rows = peaks.table_rows(result)
    assert [(r["measure"], r["dtype"], r["unit"]) for r in rows] == [
        ("copy bandwidth", "", "GB/s"),
        ("matmul", "fp32", "TFLOP/s"),
    ]


def test_size_rule_reduces_then_skips(monkeypatch):
    """Closed form with a fake clock: a call at size n takes n^3 ns (256 -> 0.017 s, 512 -> 0.13 s, 1024 -> 1.07 s)."""
    monkeypatch.setattr(peaks, "_one_call", lambda device, dtype, n: n**3 * 1e-9)
    n, note = peaks._affordable_size("cpu", "fp32", 2048, budget_s=2.0)
    assert n == 1024 and "a 2048^3 call takes over 2 s" in note
    n, note = peaks._affordable_size("cpu", "fp16", 2048, budget_s=0.25)
    assert n == 512 and "size 512, not 2048" in note
    assert peaks._affordable_size("cpu", "fp32", 512, budget_s=0.25) == (512, "")
    monkeypatch.setattr(peaks, "_one_call", lambda device, dtype, n: 1.0)  # even 256^3 is too slow
    n, note = peaks._affordable_size("cpu", "fp16", 2048, budget_s=0.25)
    assert n is None and "skipped" in note
    entry = peaks._matmul_throughput("cpu", "fp16", 2048, quick=True)
    assert entry["value"] is None and "skipped" in entry["skipped"]
    assert (
        peaks.table_rows({"copy": {"value": 1.0, "unit": "GB/s", "buffer_bytes": 2**20}, "matmul": {"fp16": entry}})[1][
            "note"
        ]
        == entry["skipped"]
    )


def test_cache_round_trip(quick_cpu, cache, monkeypatch):
    result, fp = quick_cpu
    path = peaks.save_peaks(result)
    assert path.parent == cache and path.name == f"peaks-{peaks.peaks_key(fp)}.json"
    assert peaks.load_peaks("cpu", fp=fp) == result
    assert peaks.load_peaks("cpu", fp={**fp, "git_commit": "0" * 40, "git_dirty": True}) == result  # code-independent
    assert peaks.load_peaks("cpu", fp={**fp, "torch_threads": fp["torch_threads"] + 1}) is None
    assert peaks.load_peaks("cpu", fp={**fp, "tf32_matmul": not fp["tf32_matmul"]}) is None

    def no_probe(*args, **kwargs):
        raise AssertionError("probed although the cache has the answer")

    monkeypatch.setattr(peaks, "fingerprint", lambda device: fp)
    monkeypatch.setattr(peaks, "probe", no_probe)
    assert peaks.get_or_probe("cpu", dtypes=("fp32",), quick=True) == result
    with pytest.raises(AssertionError, match="probed"):  # a full probe is not answered by a quick one
        peaks.get_or_probe("cpu", dtypes=("fp32",))
    path.write_text('{"schema_version": 1, "key": ')  # torn file
    assert peaks.load_peaks("cpu", fp=fp) is None


def test_fractions_closed_form():
    measured = {"copy": {"value": 2000.0}, "matmul": {"bf16": {"value": 800.0}, "fp16": {"value": None}}}
    assert peaks.fractions(measured, achieved_gbps=500.0, achieved_tflops=200.0, dtype="bf16") == {
        "frac_bandwidth": 0.25,
        "frac_flops": 0.25,
    }
    assert peaks.fractions(measured, achieved_gbps=3000.0, achieved_tflops=1.0, dtype="fp16") == {
        "frac_bandwidth": 1.5
    }  # skipped peak: no frac_flops
    assert peaks.fractions(measured, achieved_tflops=400.0, dtype="fp32") == {}
    assert peaks.fractions(measured, dtype="bf16") == {}
