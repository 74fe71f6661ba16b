"""Run summaries from result rows: what `run` and `report` print first (rendering lives in the CLI).

`summary_tables(df)` gives, per (level, pass, dtype, device, batch) group, a mechanism x grid
table of median latency (ms) with its p20-p80 spread (a contended case's cell marked, with a legend), and
one of peak memory (MiB); cells of cases that did not run show their status. `status_counts(df)` counts
cases per status; `contended_line(df)` says how many cases are contended and what to do.
`verification_failures(df)` names the mechanisms none of whose cases passed verification; `verification_hint` says
what to do about them in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from attnbench import contention
from attnbench.labels import mechanism_label, row_order, shape_label
from attnbench.tables import Table

GROUP_KEYS = ["level", "pass", "dtype", "device", "batch"]


def case_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One line per case: identity, status, message and the headline numbers."""
    if df.empty:
        return pd.DataFrame()
    ident = [
        "case_id",
        "mechanism",
        "family",
        "level",
        "variant",
        "pass",
        "device",
        "dtype",
        "batch",
        "height",
        "width",
        "tokens",
        "heads",
        "head_dim",
        "dim",
    ]
    first = df.groupby("case_id", sort=False).first().reset_index()[ident]
    status = df.groupby("case_id", sort=False).apply(_case_status, include_groups=False).rename("status")
    message = df[df["status"] != "ok"].groupby("case_id", sort=False)["message"].first().rename("message")
    out = first.merge(status, on="case_id", how="left").merge(message, on="case_id", how="left")
    out["message"] = out["message"].fillna("")

    def pick(metric: str, stat: str, name: str, note: str | None = None) -> None:
        sel = df[(df["metric"] == metric) & (df["stat"] == stat) & (df["status"] == "ok")]
        if note is not None:
            sel = sel[sel["note"] == note]
        vals = sel.groupby("case_id")["value"].first().rename(name)
        nonlocal out
        out = out.merge(vals, on="case_id", how="left")

    pick("latency", "median", "latency_ms")
    pick("latency", "p20", "latency_p20")
    pick("latency", "p80", "latency_p80")
    pick("peak_memory", "value", "peak_memory_b")
    pick("flops", "value", "flops")
    pick("achieved_gbps", "median", "gbps")
    out["contended"] = out["case_id"].isin(contention.contended_cases(df))
    out["shape"] = out.apply(shape_label, axis=1)
    return out


def _case_status(rows: pd.DataFrame) -> str:
    statuses = set(rows["status"])
    for s in ("crash", "oom", "timeout", "error", "skipped"):
        if s in statuses:
            return s
    return "ok"


def _fmt_latency(row: pd.Series) -> str:
    if row["status"] != "ok" or pd.isna(row.get("latency_ms")):
        return row["status"] if row["status"] != "ok" else "-"
    med, lo, hi = row["latency_ms"], row.get("latency_p20"), row.get("latency_p80")
    txt = f"{med:.3g}" if med < 100 else f"{med:.0f}"
    if pd.notna(lo) and pd.notna(hi) and med > 0:
        spread = max(hi - med, med - lo) / med * 100
        txt += f" ±{spread:.0f}%"
    return txt + (f" {contention.MARK}" if row.get("contended") else "")


def _fmt_mem(row: pd.Series) -> str:
    if row["status"] != "ok" or pd.isna(row.get("peak_memory_b")):
        return row["status"] if row["status"] != "ok" else "-"
    return f"{row['peak_memory_b'] / 2**20:.1f}"


def summary_tables(df: pd.DataFrame) -> list[Table]:
    """Latency (median ms, ±spread = larger of p80/p20 distance) and peak memory (MiB) pivots."""
    cases = case_frame(df)
    if cases.empty:
        return []
    tables = []
    for key, group in cases.groupby(GROUP_KEYS, sort=False, dropna=False):
        level, pass_, dtype, device, batch = key
        order = list(dict.fromkeys(group.sort_values(["tokens", "height"])["shape"]))
        mechs = row_order(list(group["mechanism"]), list(group["family"]), list(group["latency_ms"].isna()))
        suffix = f"{level} {pass_} {dtype} {device} batch {batch}"
        for name, fmt in (("latency ms (median ±spread)", _fmt_latency), ("peak memory MiB", _fmt_mem)):
            if name.startswith("peak") and group["peak_memory_b"].isna().all():
                continue
            if name.startswith("latency") and group["latency_ms"].isna().all() and (group["status"] == "ok").all():
                continue
            cells = group.assign(cell=group.apply(fmt, axis=1))
            frame = cells.pivot_table(index="mechanism", columns="shape", values="cell", aggfunc="first")
            frame = frame.reindex(index=mechs, columns=order).fillna("")
            marked = name.startswith("latency") and bool(group["contended"].any())
            tables.append(Table(f"{name} — {suffix}", frame, (contention.LEGEND,) if marked else ()))
    return tables


def _convention(note: str) -> str:
    """The short convention label at the head of a note (`macs_no_attn; per batch of 2` ->
    ` (macs_no_attn)`); long descriptive notes (inputs, tolerances) stay out of column names."""
    head = note.split(";")[0].strip() if note else ""
    return f" ({head})" if head and len(head) <= 24 else ""


SINGLE_METRICS = (
    "params",
    "macs",
    "macs_with_attn",
    "flops",
    "flops_counted",
    "top1",
    "top5",
    "kv_rank",
    "kv_erank",
    "out_rank",
    "out_erank",
)


def single_metric_tables(df: pd.DataFrame) -> list[Table]:
    """What a report shows of the single-valued metrics: those of model-level cases and of rank runs."""
    chosen = df[df["level"].eq("model") | df["metric"].isin(("kv_erank", "out_erank"))]
    return metric_tables(chosen, SINGLE_METRICS)


def metric_tables(df: pd.DataFrame, metrics: tuple[str, ...]) -> list[Table]:
    """Single-valued metrics (params, macs, ranks, accuracy, ...): one table per (level, pass, dtype,
    batch), rows `mechanism [model] @size` (model level) or `mechanism [variant]` (op/mixer, one table per shape).
    Counts (FLOPs, MACs) are per timed call, i.e. for the whole batch."""
    sel = df[df["metric"].isin(metrics) & (df["status"] == "ok")]
    if sel.empty:
        return []
    sel = sel.assign(
        col=sel["metric"]
        + sel["note"].map(_convention)
        + sel["source"].map(lambda s: " reported" if s == "reported" else ""),
        shape=sel.apply(shape_label, axis=1),
    )
    sel = sel.assign(who=[mechanism_label(r, size=True) for r in sel.to_dict("records")])
    keys = ["level", "pass", "dtype", "batch"]
    tables = []
    for key, group in sel.groupby(keys + ["shape"] if (sel["level"] != "model").any() else keys, sort=False):
        level, pass_, dtype, batch = key[:4]
        where = f" — {key[4]}" if len(key) > 4 and level != "model" else ""
        frame = group.pivot_table(index="who", columns="col", values="value", aggfunc="first", sort=False)
        frame = frame.map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
        title = f"{level} metrics — {pass_} {dtype} batch {batch}{where}"
        if level == "model":
            title += " (counts per batch)"
        tables.append(Table(title, frame))
    return tables


def status_counts(df: pd.DataFrame) -> dict[str, int]:
    cases = case_frame(df)
    if cases.empty:
        return {}
    return {k: int(v) for k, v in cases["status"].value_counts().items()}


def contended_line(df: pd.DataFrame) -> str:
    """The end-of-run line about contended cases (how many, what to do), or "" when there are none."""
    cases = contention.contended_cases(df)
    return contention.count(cases) if cases else ""


def problems(df: pd.DataFrame) -> pd.DataFrame:
    """Cases that did not run cleanly, grouped by (mechanism, status, message) with a case count."""
    cases = case_frame(df)
    if cases.empty:
        return cases
    bad = cases[cases["status"] != "ok"]
    grouped = bad.groupby(["mechanism", "status", "message"], sort=False)
    out = grouped.agg(cases=("case_id", "size"), shapes=("shape", lambda s: ", ".join(dict.fromkeys(s))))
    return out.reset_index()[["mechanism", "status", "cases", "shapes", "message"]]


_CHECKED_AGAINST = re.compile(r"\bvs (\S+) in float64")
_TOLERANCE = re.compile(r"\btolerance ([0-9.eE+-]+)")


@dataclass(frozen=True)
class VerifyFailure:
    """A mechanism none of whose cases passed, with every case that was verified failing verification."""

    mechanism: str
    reference: str  # the mechanism it was checked against in float64 (itself where `reference` is None)
    cases: int  # cases that failed verification
    rel_err: float  # the largest output error among them
    tolerance: float  # that case's tolerance

    def describe(self) -> str:
        """What failed, against what, and what to look at."""
        if self.reference == self.mechanism:
            return (
                f"every case of {self.mechanism} failed verification against itself in float64 ({self.cases} "
                f"case(s), rel_err up to {self.rel_err:.3g}, tolerance {self.tolerance:.3g}): its output in the "
                "case dtype is far from its float64 output; look for overflow or low-precision accumulation"
            )
        return (
            f"every case of {self.mechanism} failed verification against {self.reference} ({self.cases} case(s), "
            f"rel_err up to {self.rel_err:.3g}, tolerance {self.tolerance:.3g}): if it does not compute the same "
            f"function as {self.reference}, register it with reference=None"
        )


def verification_hint(failures: list[VerifyFailure]) -> str:
    """One line for all `failures`: each described, then what `reference` means; rows stay in the results file."""
    return (
        "; ".join(f.describe() for f in failures)
        + ". A mechanism's `reference` (register_mechanism) names the mechanism whose float64 output it must "
        "match; reference=None (the default) checks it against itself run in float64. Failed cases have no time"
    )


def verification_failures(df: pd.DataFrame) -> list[VerifyFailure]:
    """The mechanisms of `df` whose verified cases (rows of metric rel_err) all failed and that have no ok row
    (a case that passed, or one measured without verification, has ok rows), in order of appearance."""
    if df.empty:
        return []
    verified = df[df["metric"] == "rel_err"]
    ok_mechanisms = set(df.loc[df["status"] == "ok", "mechanism"])
    out = []
    for mechanism, rows in verified.groupby("mechanism", sort=False):
        if mechanism in ok_mechanisms:
            continue
        worst = rows.loc[rows["value"].fillna(float("inf")).idxmax()]
        against = _CHECKED_AGAINST.search(str(worst["note"]))
        tolerance = _TOLERANCE.search(str(worst["note"]))
        out.append(
            VerifyFailure(
                mechanism=str(mechanism),
                reference=against.group(1) if against else str(mechanism),
                cases=int(rows["case_id"].nunique()),
                rel_err=float(worst["value"]),
                tolerance=float(tolerance.group(1)) if tolerance else float("nan"),
            )
        )
    return out
