"""Measured peaks of a device: copy bandwidth and dense matmul throughput, cached per environment.

They are the denominators of the `frac_bandwidth` and `frac_flops` metrics: not datasheet numbers,
but what this device reaches, timed the way every case is timed (attnbench.measure.timing.time_fn:
warm-up outside the timed region, adaptive repeats, median).

- Copy bandwidth: `dst.copy_(src)` of one contiguous buffer on the device, larger than any cache
  (GPU 1 GiB, CPU 256 MiB; quick: 256 MiB / 64 MiB); bytes moved = 2 x size (read + write);
  GB/s = 1e9 B/s.
- Matmul throughput per dtype: `torch.mm(a, b, out=c)` on random n x n matrices (GPU: n = 8192 for
  fp16/bf16, 4096 for fp32; CPU: 2048; quick: 2048 / 512); FLOPs = 2 n^3; TFLOP/s = 1e12 FLOP/s.
  fp32 runs with TF32 off (float32 matmul precision "highest" for the duration, then restored);
  fp16/bf16 with PyTorch's defaults; both settings are recorded under "settings".
  To bound the probe's time, the size is approached from n = 256 upwards, doubling while one call,
  predicted from the last measured one, stays within a budget (1 s; quick 0.25 s); a dtype that
  stops short of its target size says so in "note", and one whose 256^3 call is already over budget
  (or that the device cannot multiply) is skipped with the reason (CPU fp16 gemm often has no fast
  kernel; on a 2-core x86 CPU the fp16 probe ends near n = 512).

Cache: one JSON file per environment, `peaks-<key>.json` in $ATTNBENCH_CACHE_DIR (default
~/.cache/attnbench). key = env_id of the env fingerprint without the project's own git commit and
dirty flag: peaks depend on hardware, software versions, threads and TF32 settings, not on this
project's code, and keying on the commit would re-probe after every commit. The full fingerprint is
stored in the file.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from attnbench.dtypes import DTYPES, torch_dtype
from attnbench.machine import PROJECT_FIELDS
from attnbench.measure.env import env_id, fingerprint
from attnbench.measure.timing import RepeatPolicy, summarize, synchronize, time_fn

__all__ = [
    "DTYPES",
    "cache_dir",
    "cache_path",
    "fractions",
    "get_or_probe",
    "load_peaks",
    "peaks_key",
    "probe",
    "save_peaks",
    "table_rows",
]

SCHEMA_VERSION = 1

COPY_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}
QUICK_COPY_BYTES = {"cuda": 256 << 20, "cpu": 64 << 20}
MATMUL_N = {"cuda": {"fp32": 4096, "fp16": 8192, "bf16": 8192}, "cpu": {"fp32": 2048, "fp16": 2048, "bf16": 2048}}
QUICK_MATMUL_N = {"cuda": 2048, "cpu": 512}
PILOT_N = 256
CALL_BUDGET_S = {False: 1.0, True: 0.25}  # longest single matmul call the probe will start (full, quick)
WARMUP = {False: 3, True: 2}
POLICY = {False: RepeatPolicy(min=5, max=100, min_time_s=0.5), True: RepeatPolicy(min=3, max=10, min_time_s=0.05)}


# -- measuring -------------------------------------------------------------------------------------------
def probe(
    device: str = "cpu", *, dtypes: tuple[str, ...] = DTYPES, quick: bool = False, fp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Measure copy bandwidth and matmul throughput per dtype on `device`; returns a JSON-able dict.

    `fp` is the environment fingerprint the result belongs to (default: fingerprint(device), taken
    before the probe changes any setting). Keys: schema_version, device, key, env_id, measured_at,
    quick, timing, settings, copy (value GB/s), matmul {dtype: value TFLOP/s, or value None and
    skipped: reason}, fingerprint.
    """
    bad = set(dtypes) - set(DTYPES)
    if bad:
        raise ValueError(f"unknown dtypes {sorted(bad)} (use {DTYPES})")
    fp = fingerprint(device) if fp is None else fp
    kind = torch.device(device).type
    if kind not in COPY_BYTES:
        raise ValueError(f"peaks are measured on cpu or cuda, not {device!r}")
    copy = _copy_bandwidth(device, (QUICK_COPY_BYTES if quick else COPY_BYTES)[kind], quick)
    matmul = {}
    for dtype in dtypes:
        target = QUICK_MATMUL_N[kind] if quick else MATMUL_N[kind][dtype]
        matmul[dtype] = _matmul_throughput(device, dtype, target, quick)
    if kind == "cuda":
        torch.cuda.empty_cache()  # hand the probe's buffers back before cases run
    return {
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "key": peaks_key(fp),
        "env_id": env_id(fp),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "timing": {
            "method": "attnbench.measure.timing.time_fn",
            "stat": "median",
            "warmup": WARMUP[quick],
            "repeats_min": POLICY[quick].min,
            "repeats_max": POLICY[quick].max,
            "min_time_s": POLICY[quick].min_time_s,
        },
        "settings": {
            "threads": torch.get_num_threads(),
            "fp32_matmul": "TF32 off (float32 matmul precision 'highest')",
            "fp16_reduced_precision_reduction": bool(torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction),
            "bf16_reduced_precision_reduction": bool(torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction),
        },
        "copy": copy,
        "matmul": matmul,
        "fingerprint": fp,
    }


def _timed(fn: Callable[[], Any], device: str, quick: bool) -> dict[str, float]:
    stats = summarize(time_fn(fn, device=device, warmup=WARMUP[quick], policy=POLICY[quick]))
    return {"median_s": stats["median"], "p20_s": stats["p20"], "p80_s": stats["p80"], "repeats": int(stats["n"])}


def _copy_bandwidth(device: str, nbytes: int, quick: bool) -> dict[str, Any]:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # touched, so no page faults are timed
    dst = torch.empty_like(src)
    timing = _timed(lambda: dst.copy_(src), device, quick)
    moved = 2 * nbytes
    return {
        "metric": "copy_bandwidth",
        "value": moved / timing["median_s"] / 1e9,
        "unit": "GB/s",
        "op": "dst.copy_(src)",
        "buffer_bytes": nbytes,
        "bytes_moved": moved,
        **timing,
    }


def _matmul_throughput(device: str, dtype: str, target: int, quick: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"metric": "matmul", "dtype": dtype, "value": None, "unit": "TFLOP/s"}
    previous_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 off for fp32 (recorded in settings)
    try:
        n, note = _affordable_size(device, dtype, target, CALL_BUDGET_S[quick])
        if n is None:
            return {**entry, "skipped": note}
        a, b = (torch.randn(n, n, device=device).to(torch_dtype(dtype)) for _ in range(2))  # (n, n)
        c = torch.empty(n, n, device=device, dtype=torch_dtype(dtype))
        timing = _timed(lambda: torch.mm(a, b, out=c), device, quick)
    except RuntimeError as exc:  # e.g. a dtype this device's BLAS does not implement
        return {**entry, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    finally:
        torch.set_float32_matmul_precision(previous_precision)
    flops = 2.0 * n**3
    entry.update(value=flops / timing["median_s"] / 1e12, size=n, flops=flops, **timing)
    if note:
        entry["note"] = note
    return entry


def _affordable_size(device: str, dtype: str, target: int, budget_s: float) -> tuple[int | None, str]:
    """The largest n <= target (256, 512, ... or target) whose single call stays within budget_s.

    Sizes double from PILOT_N; a step is tried only if the call it predicts (the last measured call
    times the FLOP ratio) fits the budget, and kept only if its measured call does. (None, reason)
    when the smallest call is already over budget.
    """
    n = min(PILOT_N, target)
    seconds = _one_call(device, dtype, n)
    if seconds > budget_s:
        return None, (
            f"one {n}^3 {dtype} matmul takes {seconds:.2f} s here (no fast kernel?), over the "
            f"{budget_s:g} s budget per call: skipped"
        )
    while n < target:
        step = min(2 * n, target)
        predicted = seconds * (step / n) ** 3
        step_seconds = predicted if predicted > budget_s else _one_call(device, dtype, step)
        if step_seconds > budget_s:
            rate = 2.0 * n**3 / seconds / 1e9
            return n, f"size {n}, not {target}: a {step}^3 call takes over {budget_s:g} s ({rate:.3g} GFLOP/s at {n})"
        n, seconds = step, step_seconds
    return n, ""


def _one_call(device: str, dtype: str, n: int) -> float:
    """Seconds of one n^3 matmul, after one untimed call (library initialisation, kernel selection)."""
    a = torch.randn(n, n, device=device).to(torch_dtype(dtype))  # (n, n)
    c = torch.empty_like(a)
    torch.mm(a, a, out=c)
    synchronize(device)
    start = time.perf_counter()
    torch.mm(a, a, out=c)
    synchronize(device)
    return time.perf_counter() - start


# -- using a measurement ---------------------------------------------------------------------------------
def fractions(
    peaks: dict[str, Any], *, achieved_gbps: float | None = None, achieved_tflops: float | None = None, dtype: str
) -> dict[str, float]:
    """frac_bandwidth = achieved_gbps / copy bandwidth; frac_flops = achieved_tflops / matmul peak of `dtype`.

    Only the fractions that can be formed are returned (an achieved value was given and the peak was
    measured), so callers can turn each item into a row.
    """
    out: dict[str, float] = {}
    bandwidth = (peaks.get("copy") or {}).get("value")
    if achieved_gbps is not None and bandwidth:
        out["frac_bandwidth"] = achieved_gbps / bandwidth
    flops_peak = ((peaks.get("matmul") or {}).get(dtype) or {}).get("value")
    if achieved_tflops is not None and flops_peak:
        out["frac_flops"] = achieved_tflops / flops_peak
    return out


def table_rows(peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per measurement (measure, dtype, value, unit, size, note), e.g. for `env --probe`."""
    copy = peaks["copy"]
    rows = [
        {
            "measure": "copy bandwidth",
            "dtype": "",
            "value": copy["value"],
            "unit": copy["unit"],
            "size": f"{copy['buffer_bytes'] / 2**20:g} MiB",
            "note": "dst.copy_(src), 2 x size moved",
        }
    ]
    for dtype, entry in peaks["matmul"].items():
        rows.append(
            {
                "measure": "matmul",
                "dtype": dtype,
                "value": entry["value"],
                "unit": entry["unit"],
                "size": f"{entry['size']}^3" if "size" in entry else "",
                "note": entry.get("skipped") or entry.get("note") or ("TF32 off" if dtype == "fp32" else ""),
            }
        )
    return rows


# -- the cache -------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$ATTNBENCH_CACHE_DIR, else ~/.cache/attnbench."""
    override = os.environ.get("ATTNBENCH_CACHE_DIR")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "attnbench"


def peaks_key(fp: dict[str, Any]) -> str:
    """The cache key of a fingerprint: its env_id without the project's git commit, its date and the dirty flag."""
    return env_id({k: v for k, v in fp.items() if k not in PROJECT_FIELDS})


def cache_path(fp: dict[str, Any]) -> Path:
    return cache_dir() / f"peaks-{peaks_key(fp)}.json"


def save_peaks(peaks: dict[str, Any]) -> Path:
    """Write a probe result to its cache file (atomically); returns the path."""
    path = cache_path(peaks["fingerprint"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(peaks, indent=1, sort_keys=True, default=str))
    tmp.replace(path)
    return path


def load_peaks(device: str = "cpu", *, fp: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The cached peaks of the current environment (fingerprint(device), or `fp`), or None if not probed."""
    fp = fingerprint(device) if fp is None else fp
    path = cache_path(fp)
    try:
        peaks = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or torn: not probed as far as we can tell
        return None
    if not isinstance(peaks, dict) or peaks.get("schema_version") != SCHEMA_VERSION:
        return None
    if peaks.get("key") != peaks_key(fp):  # a file copied from elsewhere, or a changed key rule
        return None
    return peaks


def get_or_probe(
    device: str = "cpu", *, dtypes: tuple[str, ...] = DTYPES, quick: bool = False, refresh: bool = False
) -> dict[str, Any]:
    """Cached peaks for this environment if they cover `dtypes` (and are a full probe unless `quick`),
    else probe now and cache the result. `refresh` always probes."""
    fp = fingerprint(device)
    cached = None if refresh else load_peaks(device, fp=fp)
    if cached is not None and (quick or not cached.get("quick")) and set(dtypes) <= set(cached.get("matmul", {})):
        return cached
    peaks = probe(device, dtypes=dtypes, quick=quick, fp=fp)
    save_peaks(peaks)
    return peaks
