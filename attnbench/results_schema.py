"""The results row schema (docs/design.md "Results"): columns, allowed values, and the checks a row
or a sample line must pass to be written or loaded."""

from __future__ import annotations

import math

SCHEMA_VERSION = 2
READABLE_SCHEMAS = ("1", "2")  # schema 1 lacks worker/concurrent: loaded with them empty
COLUMNS_V1 = [
    "schema_version",
    "run_id",
    "case_id",
    "suite",
    "mechanism",
    "family",
    "backend",
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
    "metric",
    "value",
    "unit",
    "stat",
    "status",
    "message",
    "source",
    "note",
    "env_id",
    "started_at",
]
# schema 2: who measured the row and how many cases that host ran at once meanwhile
COLUMNS = COLUMNS_V1 + ["worker", "concurrent"]
SAMPLE_COLUMNS = ["case_id", "metric", "round", "sweep", "rep", "value"]  # older files lack sweep (and round): 0
ROW_KEY = ("case_id", "metric", "stat", "source")  # at most one row per key in a file (the writer refuses more)
INT_COLUMNS = ["schema_version", "batch", "height", "width", "tokens", "heads", "head_dim", "dim", "concurrent"]
STATUSES = ("ok", "skipped", "oom", "timeout", "crash", "error")
STATS = ("median", "mean", "min", "p20", "p80", "std", "n", "value")
SOURCES = ("measured", "reported")
MAX_INT = 2**53  # larger integers do not survive a float round trip: refused on write, skipped on load
MAX_TEXT = 2000  # characters of a text cell (messages are one line)


def _int_problem(text: str, column: str, low: int = 0) -> str | None:
    if text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        return f"{column} {text[:40]!r} is not an integer"
    if not low <= value <= MAX_INT:
        return f"{column} {text[:40]} is out of range"
    return None


def _float_problem(text: str, column: str, *, required: bool) -> str | None:
    if text == "":
        return f"{column} is empty" if required else None
    try:
        value = float(text)
    except ValueError:
        return f"{column} {text[:40]!r} is not a number"
    if not math.isfinite(value):
        return f"{column} {text[:40]} is not finite"
    return None


def check_row(row: dict[str, str]) -> str | None:
    """Why a results row (as text) is invalid, or None: schema_version 1 or 2, known status/stat/source,
    integer shape columns, a finite value (required for status ok)."""
    if row["schema_version"] not in READABLE_SCHEMAS:
        return (
            f"schema_version {row['schema_version'][:20]!r} is not one of {', '.join(READABLE_SCHEMAS)} "
            "(written by another version?)"
        )
    if not row["case_id"] or not row["metric"]:
        return "case_id or metric is empty"
    if row["status"] not in STATUSES:
        return f"status {row['status'][:40]!r} is not one of {', '.join(STATUSES)}"
    if row["stat"] not in STATS:
        return f"stat {row['stat'][:40]!r} is not one of {', '.join(STATS)}"
    if row["source"] not in (*SOURCES, ""):
        return f"source {row['source'][:40]!r} is not one of {', '.join(SOURCES)}"
    for col in INT_COLUMNS[1:]:
        problem = _int_problem(row.get(col, ""), col, low=1 if col in ("batch", "height", "width") else 0)
        if problem:
            return problem
    return _float_problem(row["value"], "value", required=row["status"] == "ok")


def check_sample(row: dict[str, str]) -> str | None:
    """Why a samples row is invalid, or None: case_id and metric set, rep (and round, sweep) an integer >= 0, a
    finite value."""
    if not row["case_id"] or not row["metric"]:
        return "case_id or metric is empty"
    if row["rep"] == "" or row.get("round") == "" or row.get("sweep") == "":
        return "rep, round or sweep is empty"
    return (
        _int_problem(row["rep"], "rep")
        or _int_problem(row.get("round", "0"), "round")
        or _int_problem(row.get("sweep", "0"), "sweep")
        or _float_problem(row["value"], "value", required=True)
    )
