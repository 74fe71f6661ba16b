"""Result files: the row schema, durable appends, loading into typed DataFrames.

A run `--out FILE.csv` writes four files (DESIGN.md): FILE.csv (rows), FILE.env.json
(env_id -> fingerprint), FILE.suite.yaml (the resolved suite), FILE.samples.csv (raw repeats).
Rows are appended and flushed (and fsync'ed) as each case finishes, so a killed run leaves a
loadable file; a torn last line is dropped on load with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from attnbench.errors import ResultsError

SCHEMA_VERSION = 2
COLUMNS_V1 = [
    "schema_version", "run_id", "case_id", "suite", "mechanism", "family", "backend", "level", "variant",
    "pass", "device", "dtype", "batch", "height", "width", "tokens", "heads", "head_dim", "dim", "metric",
    "value", "unit", "stat", "status", "message", "source", "note", "env_id", "started_at",
]  # fmt: skip
# schema 2 (issue #13): who measured the row and how many cases that host ran at once meanwhile
COLUMNS = COLUMNS_V1 + ["worker", "concurrent"]
SAMPLE_COLUMNS = ["case_id", "metric", "round", "rep", "value"]
ROW_KEY = ("case_id", "metric", "stat", "source")  # at most one row per key in a file (the writer refuses more)
INT_COLUMNS = ["schema_version", "batch", "height", "width", "tokens", "heads", "head_dim", "dim", "concurrent"]
STATUSES = ("ok", "skipped", "oom", "timeout", "crash", "error")


def companion(path: str | Path, kind: str) -> Path:
    """FILE.csv -> FILE.<kind> (env.json, suite.yaml, samples.csv)."""
    path = Path(path)
    stem = path.name[:-4] if path.name.endswith(".csv") else path.name
    return path.with_name(f"{stem}.{kind}")


class _Appender:
    """A CSV file opened for appending; header written once; each batch of rows is serialised
    first and written with a single os.write on an O_APPEND descriptor, then fsync'ed, so a
    killed process leaves either all of a case's rows or none (at worst a torn last line)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            _repair_tail(path)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:
            self._append([dict(zip(columns, columns))])

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self._append([{c: _cell(row.get(c)) for c in self.columns} for row in rows])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="raise", lineterminator="\n")
        writer.writerows(rows)
        data = buf.getvalue().encode("utf-8")
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):  # np.float64 too: repr(float) keeps full precision and stays plain
        return repr(float(value))
    return value


def _repair_tail(path: Path) -> None:
    """Truncate a torn last line (no trailing newline) left by a killed writer, so appends stay aligned."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)
        warnings.warn(f"{path}: dropped a torn last line left by an interrupted run", stacklevel=3)


class ResultsWriter:
    """Appends rows and samples for one run; see module docstring for the files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix != ".csv":
            raise ResultsError(f"--out must name a .csv file, got {str(path)!r}")
        samples_path = companion(self.path, "samples.csv")
        if samples_path.exists() and samples_path.stat().st_size and _header(samples_path) != SAMPLE_COLUMNS:
            raise ResultsError(f"{samples_path} was written by an older attnbench (no `round` column); "
                               "choose a new --out instead of resuming it")  # fmt: skip
        if self.path.exists() and self.path.stat().st_size and _header(self.path) == COLUMNS_V1:
            raise ResultsError(f"{self.path} was written by an older attnbench (schema 1, no worker/concurrent "
                               "columns); choose a new --out instead of resuming it")  # fmt: skip
        try:
            self.rows = _Appender(self.path, COLUMNS)
            self.samples = _Appender(samples_path, SAMPLE_COLUMNS)
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.path}: {exc.strerror or exc}; "
                               "choose a writable --out") from None  # fmt: skip
        self._keys = row_keys(self.path)  # rows already in the file (a resumed run)

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append one case's rows; a second row with the same (case_id, metric, stat, source) is refused,
        so every pivot and gate on the file is unambiguous."""
        keys = [tuple(str(row.get(c, "")) for c in ROW_KEY) for row in rows]
        seen = set(self._keys)
        for key in keys:
            if key in seen:
                raise ResultsError(f"duplicate row {dict(zip(ROW_KEY, key))} for {self.path}: a metric needs one row "
                                   "per (case_id, metric, stat, source); give the second convention its own metric")
            seen.add(key)
        self.rows.write(rows)
        self._keys = seen

    def write_samples(self, case_id: str, metric: str, values: list[float], round: int = 0) -> None:
        self.samples.write({"case_id": case_id, "metric": metric, "round": round, "rep": i, "value": v}
                           for i, v in enumerate(values))  # fmt: skip

    def write_env(self, env_id: str, fp: dict[str, Any]) -> None:
        path = companion(self.path, "env.json")
        envs: dict[str, Any] = {}
        if path.exists():
            try:
                envs = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                warnings.warn(f"{path} was unreadable; it is rewritten with this run's environment", stacklevel=2)
        envs[env_id] = fp
        _atomic_write(path, json.dumps(envs, indent=2, sort_keys=True, default=str))

    def write_suite(self, text: str) -> None:
        _atomic_write(companion(self.path, "suite.yaml"), text)

    def close(self) -> None:
        self.rows.close()
        self.samples.close()


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return next(csv.reader([fh.readline()]), [])


def row_keys(path: str | Path) -> set[tuple[str, ...]]:
    """(case_id, metric, stat, source) of the rows already in FILE.csv (empty when there is none)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = _read_csv_tolerant(path, COLUMNS_V1)
    return set(df[list(ROW_KEY)].itertuples(index=False, name=None))


def _read_csv_tolerant(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not a text (UTF-8) CSV; pass a file written by `attnbench run`") from None
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc.strerror or exc}") from exc
    if not text.strip():
        return pd.DataFrame(columns=columns)
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        warnings.warn(f"{path}: dropped a torn last line left by an interrupted run", stacklevel=3)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(f"{path} is not a results CSV ({exc}); pass a file written by `attnbench run`") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultsError(f"{path} is not an attnbench results file: missing columns {missing}")
    return df


def load(path: str | Path, *, dedupe: bool = True) -> pd.DataFrame:
    """Rows of a results CSV as a DataFrame with typed columns.

    value is float; the shape columns and `concurrent` are nullable integers; empty strings stay "" in text
    columns. Schema-1 files (no `worker`, `concurrent`) load with those columns empty.
    dedupe keeps the last row per (case_id, metric, stat, note, source) - a case measured twice
    (e.g. a run appended to a file) reports its latest measurement.
    """
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results file {path} not found")
    df = _read_csv_tolerant(path, COLUMNS_V1)
    for col in COLUMNS[len(COLUMNS_V1):]:  # a schema-1 file: who measured it and how concurrently is unknown
        if col not in df.columns:
            df[col] = ""
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    df["value"] = pd.to_numeric(df["value"].replace("", None), errors="coerce").astype("float64")
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce").astype("Int64")
    if dedupe and len(df):
        df = df.drop_duplicates(subset=["case_id", "metric", "stat", "note", "source"], keep="last")
    return df.reset_index(drop=True)


def load_samples(path: str | Path) -> pd.DataFrame:
    """Raw repeat samples (case_id, metric, round, rep, value) of FILE.csv (or of the samples file itself).

    Files written before rounds existed have no `round` column: all their samples are round 0."""
    path = Path(path)
    if not path.name.endswith(".samples.csv"):
        path = companion(path, "samples.csv")
    if not path.exists():
        raise ResultsError(f"samples file {path} not found (it is written beside FILE.csv by `attnbench run`)")
    df = _read_csv_tolerant(path, [c for c in SAMPLE_COLUMNS if c != "round"])
    if "round" not in df.columns:
        df.insert(2, "round", "0")
    for col in ("round", "rep"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    return df


def done_case_ids(path: str | Path) -> set[str]:
    """case_ids that already have rows in FILE.csv (for --resume)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = _read_csv_tolerant(path, COLUMNS_V1)
    return set(df["case_id"])
