"""Per-kernel attribution: a case's workload run once more under torch.profiler, after its timing.

With the suite key `profile: true` (`attnbench run --profile`), the process that timed a case (this process,
or the round's worker: attnbench.isolation) calls the case's workload again in the case's last visit, the one
that produces its rows (never in the time-only visits before it), once the timed metrics are done:
WARM_CALLS plain calls, then PROFILED_CALLS calls under `torch.profiler.profile`. Activities: CPU, plus
ProfilerActivity.CUDA when the case runs on cuda (record_shapes on cuda only: on the CPU it costs op time).
The calls are plain calls of the timed closure: no L2 flush, no CUDA-graph replay, no timing.

The result, a `Profile`, rides with the case's rows (the row key PROFILE_KEY) to the results writer
(attnbench.results), which writes FILE.profiles/<case_id>.json (the Chrome trace, for Perfetto or
chrome://tracing) and appends the case's lines to FILE.kernels.csv before the rows themselves. A profile
that fails costs the case nothing but its profile: its rows keep status ok and the latency median row's
`message` says why (PROFILE_FAILED).

FILE.kernels.csv (KERNEL_COLUMNS): per case one line per op (cpu: the CPU self time of each aten op and
profiler range) or per kernel (cuda: the device time of each CUDA kernel; CPU ops when the profiler saw no
kernel), `calls` and `self_time_us` per call of the workload (the mean over the profiled calls), `share` of
the case's profiled time on that device (a case's shares sum to 1).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from attnbench.results import PROFILE_KEY

WARM_CALLS = 1  # plain calls before the profiled ones (the timed repeats already warmed the case)
PROFILED_CALLS = 3  # calls under the profiler; calls and self times are per call (their mean)
PROFILE_FAILED = "profile failed: "  # how the message of a case whose profile failed begins


@dataclass
class Profile:
    """One case's profile, or why it has none (`message`)."""

    trace: str = ""  # the Chrome trace, as JSON text
    kernels: list[dict[str, Any]] = field(default_factory=list)  # FILE.kernels.csv lines, without case_id
    message: str = ""  # "" when profiled, else PROFILE_FAILED + the reason


def profile_workload(fn: Callable[[], Any], device: str) -> Profile:
    """`fn` (a case's timed closure) called WARM_CALLS times, then PROFILED_CALLS times under the profiler;
    never raises: a failure is a Profile with only a message."""
    try:
        prof = _run_profiler(fn, device)
        kernels = attribution(prof.key_averages(), device, PROFILED_CALLS)
        return Profile(_chrome_trace(prof), kernels)
    except Exception as exc:  # the case's rows are kept; the message says why it has no profile
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Profile(message=(PROFILE_FAILED + text)[:500])


def _run_profiler(fn: Callable[[], Any], device: str):
    from torch.profiler import ProfilerActivity, profile

    from attnbench.measure.memory import _quiet_stderr
    from attnbench.measure.timing import synchronize

    cuda = str(device).startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for _ in range(WARM_CALLS):
        fn()
    synchronize(device)
    with _quiet_stderr(), profile(activities=activities, record_shapes=cuda) as prof:
        for _ in range(PROFILED_CALLS):
            fn()
        synchronize(device)
    return prof


def _chrome_trace(prof) -> str:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    finally:
        os.unlink(path)
    json.loads(text)  # a trace that does not parse is a failed profile, not a file Perfetto refuses
    return text


def attribution(events, device: str, calls: int) -> list[dict[str, Any]]:
    """FILE.kernels.csv lines (without case_id) from the profiler's key averages `events` over `calls` calls,
    largest self time first: CUDA kernels by device time on cuda (CPU ops where the profiler recorded no
    kernel time), else aten ops by CPU self time."""
    chosen = []
    if str(device).startswith("cuda"):
        chosen = [(e.key, e.count, e.self_device_time_total) for e in events if _is_cuda(e)]
        chosen = [c for c in chosen if c[2] > 0]
    where = "cuda" if chosen else "cpu"
    if not chosen:
        chosen = [(e.key, e.count, e.self_cpu_time_total) for e in events if not _is_cuda(e) and e.count]
    merged: dict[str, list[float]] = {}  # one line per name (the profiler may split a name, e.g. by thread)
    for name, count, took in chosen:
        line = merged.setdefault(str(name), [0, 0.0])
        line[0] += count
        line[1] += max(float(took), 0.0)
    total = sum(took for _, took in merged.values())
    out = [
        {
            "name": name,
            "calls": round(count / calls, 3),
            "self_time_us": round(took / calls, 3),
            "share": round(took / total if total > 0 else 1.0 / len(merged), 6),
            "device": where,
        }
        for name, (count, took) in merged.items()
    ]
    return sorted(out, key=lambda r: (-r["self_time_us"], r["name"]))


def _is_cuda(event) -> bool:
    return getattr(getattr(event, "device_type", None), "name", "") == "CUDA"


def attach(rows: list[dict[str, Any]], profile: Profile | None) -> None:
    """Give a case's rows its profile for the writer (on the first row); a failed profile's message goes on
    the latency median row (else the first row), whose status stays as it is."""
    if profile is None or not rows:
        return
    rows[0][PROFILE_KEY] = profile
    if profile.message:
        median = [r for r in rows if r.get("metric") == "latency" and r.get("stat") == "median"]
        target = (median or rows)[0]
        target["message"] = "; ".join(m for m in (target.get("message"), profile.message) if m)


# -- report --kernels ----------------------------------------------------------------------------------------
CASE_ORDER = ("mechanism", "level", "variant", "pass", "dtype", "batch", "tokens", "heads", "head_dim", "dim")


def top_kernels(kernels, rows, top: int):
    """The `top` lines of each case of `kernels` (attnbench.results.load_kernels) by self time, as a DataFrame
    with the case's label (`case`, from its results `rows`) and `rank` first; cases in reading order (as the
    report's tables: mechanism, level, ..., shape), cases without rows last, labelled by their case_id."""
    import pandas as pd

    from attnbench.labels import case_label

    firsts = rows.drop_duplicates("case_id").set_index("case_id") if len(rows) else pd.DataFrame()
    labels = {cid: case_label({**r.to_dict(), "case_id": cid}, detail=True) for cid, r in firsts.iterrows()}

    def order(cid: str) -> tuple:
        if cid not in labels:
            return (1, (), cid)
        r = firsts.loc[cid]
        return (0, tuple(_sort_key(r.get(k)) for k in CASE_ORDER), cid)

    parts = []
    for cid in sorted(dict.fromkeys(kernels["case_id"]), key=order):
        lines = kernels[kernels["case_id"] == cid].sort_values(["self_time_us", "name"], ascending=[False, True])
        lines = lines.head(top).assign(case=labels.get(cid, cid), rank=range(1, min(top, len(lines)) + 1))
        parts.append(lines)
    columns = ["case_id", "case", "rank", "name", "calls", "self_time_us", "share", "device"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def _sort_key(value: Any) -> tuple:
    """Numbers before text, numbers by value (7x7 before 14x14), missing values last."""
    from attnbench.labels import has_value

    if not has_value(value):
        return (2, 0.0, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def kernel_tables(kernels, rows, top: int, trace_folder: str = "") -> list:
    """One attnbench.tables.Table per case: its `top` ops or kernels (calls and self time per call, share of
    the case's profiled time), with a note on the rest and where its trace is."""
    import pandas as pd

    from attnbench.tables import Table, fmt_number

    shown = top_kernels(kernels, rows, top)
    tables = []
    for cid, lines in shown.groupby("case_id", sort=False):
        every = kernels[kernels["case_id"] == cid]
        device = str(lines["device"].iloc[0])
        what = "kernels (CUDA device time)" if device == "cuda" else "ops (CPU self time)"
        total = float(every["self_time_us"].sum())
        frame = pd.DataFrame(
            {
                "calls": [fmt_number(v) for v in lines["calls"]],
                "self time (us)": [fmt_number(v) for v in lines["self_time_us"]],
                "share": [f"{v:.1%}" for v in lines["share"]],
            },
            index=pd.Index([str(n) for n in lines["name"]], name="kernel" if device == "cuda" else "op"),
        )
        notes = [f"per call of the workload ({PROFILED_CALLS} calls profiled); {fmt_number(total)} us in all"]
        rest = len(every) - len(lines)
        if rest > 0:
            notes.append(f"{rest} more, {max(0.0, 1 - float(lines['share'].sum())):.1%} of the time")
        if trace_folder:
            notes.append(f"trace: {trace_folder}/{cid}.json")
        title = f"top {what}: {lines['case'].iloc[0]} [{cid}]"
        tables.append(Table(title, frame, tuple(notes)))
    return tables
