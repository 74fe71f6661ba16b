"""Result files: durable appends and loading into typed DataFrames (the row schema: `results_schema`).

A run `--out FILE.csv` writes four files (docs/design.md, "Results"): FILE.csv (rows),
FILE.env.json (env_id -> fingerprint), FILE.suite.yaml (the resolved suite), FILE.samples.csv (raw repeats);
with `profile: true` also FILE.kernels.csv (per-op or per-kernel times, KERNEL_COLUMNS) and
FILE.profiles/<case_id>.json (Chrome traces), from the profile a case's rows carry (attnbench.profiling).
Rows are appended and flushed (and fsync'ed) as each case finishes, so a killed run leaves a
loadable file; a torn last line is dropped on load with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from attnbench.errors import ResultsError
from attnbench.results_schema import (  # the schema, re-exported: results.COLUMNS, results.check_row, ...
    COLUMNS,
    COLUMNS_V1,
    INT_COLUMNS,
    MAX_INT,
    MAX_TEXT,
    READABLE_SCHEMAS,
    ROW_KEY,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    SOURCES,
    STATS,
    STATUSES,
    _float_problem,
    check_row,
    check_sample,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "COLUMNS_V1",
    "COMPANIONS",
    "INT_COLUMNS",
    "KERNEL_COLUMNS",
    "MAX_INT",
    "MAX_TEXT",
    "READABLE_SCHEMAS",
    "ROW_KEY",
    "SAMPLE_COLUMNS",
    "SCHEMA_VERSION",
    "SOURCES",
    "STATS",
    "STATUSES",
    "ResultsWriter",
    "check_out_path",
    "check_kernel",
    "check_row",
    "check_sample",
    "companion",
    "done_case_ids",
    "load",
    "load_kernels",
    "load_samples",
    "row_keys",
]
MAX_WARNINGS = 10  # bad lines warned about one by one per file; the rest are counted in one more warning
KERNEL_COLUMNS = ["case_id", "name", "calls", "self_time_us", "share", "device"]  # FILE.kernels.csv
PROFILE_KEY = "profile"  # the key of a case's row that carries its attnbench.profiling.Profile to the writer


def companion(path: str | Path, kind: str) -> Path:
    """FILE.csv -> FILE.<kind> (env.json, suite.yaml, samples.csv, kernels.csv, profiles)."""
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
        self._append([{c: _cell(c, row.get(c)) for c in self.columns} for row in rows])

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


def _cell(column: str, value: Any) -> str:
    """One cell as it is written, such that the loader reads it back: integers within MAX_INT (else
    ResultsError), a non-finite float written as no value, text on one line without control characters."""
    if value is None or (isinstance(value, str) and value == ""):
        return ""
    if isinstance(value, bool):
        return str(value)
    if column in INT_COLUMNS or column in ("rep", "round", "sweep"):
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ResultsError(f"column {column} must be an integer, got {str(value)[:40]!r}") from None
        if number != value or not 0 <= number <= MAX_INT:
            raise ResultsError(f"column {column} value {str(value)[:40]} cannot be stored (integers 0..2**53)")
        return str(number)
    if isinstance(value, (int, float)) or column == "value":
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ResultsError(f"column {column} must be a number, got {str(value)[:40]!r}") from None
        return repr(number) if math.isfinite(number) else ""  # NaN/inf: no value (the message says why)
    return _one_line(str(value))


def _one_line(text: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


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


COMPANIONS = ("samples.csv", "env.json", "suite.yaml", "kernels.csv")
NAME_MAX = 255  # bytes of one file name on common file systems


def check_out_path(path: str | Path) -> Path:
    """The results path of a run, refused (one ResultsError) when it or a companion file could not be written:
    not ending in .csv, control characters, a name too long for the file system once `.samples.csv` is
    added, or a directory where FILE.csv / FILE.env.json / ... should go."""
    text = str(path)
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    if any(ord(c) < 32 for c in text):
        raise ResultsError(f"--out {shown} contains control characters (a NUL?); choose a plain file name")
    p = Path(text)
    try:
        is_dir = len(text.encode()) <= 4000 and p.is_dir()
    except OSError:  # a component longer than the file system allows: reported below
        is_dir = False
    if is_dir:
        raise ResultsError(f"--out {shown} is a directory; give a file name ending in .csv")
    if not p.name.endswith(".csv") or p.name == ".csv" or text.endswith(("/", "\\")):
        raise ResultsError(f"--out must name a .csv file, got {shown}")
    longest = max(len(companion(p, kind).name.encode()) for kind in COMPANIONS)
    if longest > NAME_MAX or len(text.encode()) > 4000:
        raise ResultsError(
            f"--out {shown} is too long: with its companion FILE.samples.csv the name needs {longest} "
            f"bytes, at most {NAME_MAX} fit; choose a shorter name"
        )
    for part in p.parent.parts:
        if len(part.encode()) > NAME_MAX:
            raise ResultsError(f"--out {shown}: a folder name is longer than {NAME_MAX} bytes")
    for target in (p, *(companion(p, kind) for kind in COMPANIONS)):
        try:
            blocked = target.is_dir()
        except OSError:
            blocked = False
        if blocked:
            raise ResultsError(
                f"{target} is a directory, so the results of --out {shown} cannot be written there; "
                "choose another --out"
            )
    return p


class ResultsWriter:
    """Appends rows and samples for one run; see module docstring for the files."""

    def __init__(self, path: str | Path):
        self.path = check_out_path(path)
        samples_path = companion(self.path, "samples.csv")
        if samples_path.is_file() and samples_path.stat().st_size and _header(samples_path) != SAMPLE_COLUMNS:
            raise ResultsError(
                f"{samples_path} was written by an older attnbench (no `round` or `sweep` column); "
                "choose a new --out instead of resuming it"
            )
        if self.path.exists() and self.path.stat().st_size and _header(self.path) == COLUMNS_V1:
            raise ResultsError(
                f"{self.path} was written by an older attnbench (schema 1, no worker/concurrent "
                "columns); choose a new --out instead of resuming it"
            )
        try:
            self.rows = _Appender(self.path, COLUMNS)
            self.samples = _Appender(samples_path, SAMPLE_COLUMNS)
        except (OSError, ValueError) as exc:
            raise ResultsError(
                f"cannot write results to {self.path}: {getattr(exc, 'strerror', None) or exc}; choose a writable --out"
            ) from None
        self._keys = row_keys(self.path)  # rows already in the file (a resumed run)
        self.kernels: _Appender | None = None  # FILE.kernels.csv, opened with the run's first profile

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append one case's rows; a second row with the same (case_id, metric, stat, source) is refused,
        so every pivot and gate on the file is unambiguous. A profile the rows carry (PROFILE_KEY) is taken off
        them and written first (`write_profile`)."""
        profiles: dict[int, tuple[str, Any]] = {}  # a row copied from another (contention rows) shares its profile
        for row in rows:
            profile = row.pop(PROFILE_KEY, None)
            if profile is not None:
                profiles.setdefault(id(profile), (str(row.get("case_id", "")), profile))
        keys = [tuple(str(row.get(c, "")) for c in ROW_KEY) for row in rows]
        seen = set(self._keys)
        for key in keys:
            if key in seen:
                raise ResultsError(
                    f"duplicate row {dict(zip(ROW_KEY, key))} for {self.path}: a metric needs one row "
                    "per (case_id, metric, stat, source); give the second convention its own metric"
                )
            seen.add(key)
        for case_id, profile in profiles.values():
            self.write_profile(case_id, profile)
        self.rows.write(rows)
        self._keys = seen

    def write_profile(self, case_id: str, profile: Any) -> None:
        """FILE.profiles/<case_id>.json (its Chrome trace, written whole or not at all) and its lines appended to
        FILE.kernels.csv in one write. A file that cannot be written is a warning: the case's rows still are."""
        if not profile.kernels and not profile.trace:
            return
        try:
            if profile.trace:
                folder = companion(self.path, "profiles")
                folder.mkdir(parents=True, exist_ok=True)
                _atomic_write(folder / f"{case_id}.json", profile.trace)
            if profile.kernels:
                if self.kernels is None:
                    self.kernels = _Appender(companion(self.path, "kernels.csv"), KERNEL_COLUMNS)
                self.kernels.write({**line, "case_id": case_id} for line in profile.kernels)
        except (OSError, ResultsError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            warnings.warn(f"cannot write the profile of case {case_id} beside {self.path}: {reason}", stacklevel=3)

    def write_samples(self, case_id: str, metric: str, values: list[float], round: int = 0, sweep: int = 0) -> None:
        self.samples.write(
            {"case_id": case_id, "metric": metric, "round": round, "sweep": sweep, "rep": i, "value": v}
            for i, v in enumerate(values)
        )

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
        if self.kernels is not None:
            self.kernels.close()


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}; choose another --out") from None


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return next(csv.reader([fh.readline().lstrip("\ufeff")]), [])


def row_keys(path: str | Path) -> set[tuple[str, ...]]:
    """(case_id, metric, stat, source) of the valid rows already in FILE.csv (empty when there is none)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = _read_validated(path, COLUMNS_V1, check_row)
    return set(df[list(ROW_KEY)].itertuples(index=False, name=None))


def _read_validated(path: Path, columns: list[str], check: Callable[[dict[str, str]], str | None]) -> pd.DataFrame:
    """The rows of a results (or samples) CSV that pass `check`, as strings.

    The file is read line by line: a line that is not UTF-8, does not parse as one CSV record with the
    header's number of fields (an unbalanced quote, a short row), repeats the header or fails `check`
    (schema, types, finiteness) is skipped with a one-line warning naming the line; the rest are kept.
    A torn last line (no newline: an interrupted write) is dropped with a warning."""
    import pandas as pd

    data = _read_bytes(path)
    if not data.strip():
        return pd.DataFrame(columns=columns)
    lines = data.split(b"\n")
    if len(lines) < 2:
        raise ResultsError(
            f"{path} is not an attnbench results file (no complete header line); pass a results "
            ".csv file written by `attnbench run`"
        )
    if lines[-1]:
        warnings.warn(f"{path}: dropped a torn last line left by an interrupted run", stacklevel=3)
    lines = lines[:-1]
    header_text = lines[0].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    try:
        header = next(csv.reader([header_text], strict=True))
    except (csv.Error, StopIteration):
        header = []
    missing = [c for c in columns if c not in header]
    if missing:
        raise ResultsError(
            f"{path} is not an attnbench results file: missing columns {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; pass a file written by `attnbench run`"
        )
    index = [header.index(c) for c in columns]
    rows: list[list[str]] = []
    bad: list[str] = []
    for number, raw in enumerate(lines[1:], start=2):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            bad.append(f"line {number}: not UTF-8")
            continue
        if not text.strip():
            continue
        try:
            fields = next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration) as exc:
            bad.append(f"line {number}: not one CSV record ({exc})")
            continue
        if len(fields) != len(header):
            bad.append(f"line {number}: {len(fields)} fields, the header has {len(header)}")
            continue
        if fields == header:
            bad.append(f"line {number}: a repeated header")
            continue
        row = [fields[i] for i in index]
        problem = check(dict(zip(columns, row)))
        if problem:
            bad.append(f"line {number}: {problem}")
            continue
        rows.append(row)
    for message in bad[:MAX_WARNINGS]:
        warnings.warn(f"{path}: skipped {message}", stacklevel=3)
    if len(bad) > MAX_WARNINGS:
        warnings.warn(f"{path}: skipped {len(bad) - MAX_WARNINGS} more bad lines", stacklevel=3)
    df = pd.DataFrame(rows, columns=columns, dtype=object).astype(str) if rows else pd.DataFrame(columns=columns)
    df.attrs["skipped_lines"] = bad
    return df


def _read_bytes(path: Path) -> bytes:
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise ResultsError(f"results file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(
            f"cannot open results file {str(path)[:200]!r}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise ResultsError(f"{path} is a directory; pass a results .csv file written by `attnbench run`")
    if not stat.S_ISREG(st.st_mode):
        raise ResultsError(f"{path} is not a regular file (a pipe or device?); pass a results .csv file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc.strerror or exc}") from None


def load(path: str | Path, *, dedupe: bool = True) -> pd.DataFrame:
    """Rows of a results CSV as a DataFrame with typed columns.

    value is float; the shape columns and `concurrent` are nullable integers; empty strings stay "" in text
    columns. Schema-1 files (no `worker`, `concurrent`) load with those columns empty.
    dedupe keeps the last row per (case_id, metric, stat, note, source) - a case measured twice
    (e.g. a run appended to a file) reports its latest measurement.
    """
    import pandas as pd

    path = Path(path)
    header = _header(path) if path.is_file() else COLUMNS
    df = _read_validated(path, COLUMNS if "worker" in header else COLUMNS_V1, check_row)
    skipped = df.attrs.get("skipped_lines", [])
    for col in COLUMNS[len(COLUMNS_V1) :]:  # a schema-1 file: who measured it and how concurrently is unknown
        if col not in df.columns:
            df[col] = ""
    df["value"] = pd.to_numeric(df["value"].replace("", None), errors="coerce").astype("float64")
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce").astype("Int64")
    if dedupe and len(df):
        df = df.drop_duplicates(subset=["case_id", "metric", "stat", "note", "source"], keep="last")
    df = df.reset_index(drop=True)
    df.attrs["skipped_lines"] = skipped
    return df


def load_samples(path: str | Path) -> pd.DataFrame:
    """Raw repeat samples (case_id, metric, round, sweep, rep, value) of FILE.csv (or of the samples file itself).

    A samples file without a `round` (`sweep`) column (one written by an attnbench without rounds or sweeps)
    reads as 0 there."""
    import pandas as pd

    path = Path(path)
    if not path.name.endswith(".samples.csv"):
        path = companion(path, "samples.csv")
    if not path.exists():
        raise ResultsError(f"samples file {path} not found (it is written beside FILE.csv by `attnbench run`)")
    header = _header(path) if path.is_file() else SAMPLE_COLUMNS
    absent = [c for c in ("round", "sweep") if c not in header]
    df = _read_validated(path, [c for c in SAMPLE_COLUMNS if c not in absent], check_sample)
    skipped = df.attrs.get("skipped_lines", [])
    for col in absent:
        df.insert(SAMPLE_COLUMNS.index(col), col, "0")
    for col in ("round", "sweep", "rep"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    df.attrs["skipped_lines"] = skipped
    return df


def check_kernel(row: dict[str, str]) -> str | None:
    """Why a FILE.kernels.csv line is invalid, or None: case_id and name set, device cpu or cuda, finite
    non-negative calls, self_time_us and share."""
    if not row["case_id"] or not row["name"]:
        return "case_id or name is empty"
    if row["device"] not in ("cpu", "cuda"):
        return f"device {row['device'][:40]!r} is not cpu or cuda"
    for col in ("calls", "self_time_us", "share"):
        problem = _float_problem(row[col], col, required=True)
        if problem:
            return problem
        if float(row[col]) < 0:
            return f"{col} {row[col][:40]} is negative"
    return None


def load_kernels(path: str | Path) -> pd.DataFrame:
    """The profiled ops or kernels (KERNEL_COLUMNS) of FILE.csv, from FILE.kernels.csv (or that file itself):
    calls, self_time_us and share as floats. A case profiled twice (a run resumed after a kill between its
    profile and its rows) keeps its last profile: a (case_id, name, device) seen again starts the case anew."""
    import pandas as pd

    path = Path(path)
    if not path.name.endswith(".kernels.csv"):
        path = companion(path, "kernels.csv")
    if not path.exists():
        raise ResultsError(
            f"{path} not found: it is written beside FILE.csv by `attnbench run --profile` (suite key profile: true)"
        )
    df = _read_validated(path, KERNEL_COLUMNS, check_kernel)
    keep: dict[str, list[int]] = {}  # case_id -> positions of its current (last) profile
    names: dict[str, set[tuple[str, str]]] = {}
    for i, (case_id, name, device) in enumerate(zip(df["case_id"], df["name"], df["device"])):
        if (name, device) in names.get(case_id, set()):
            keep[case_id], names[case_id] = [], set()
        keep.setdefault(case_id, []).append(i)
        names.setdefault(case_id, set()).add((name, device))
    df = df.iloc[sorted(i for rows in keep.values() for i in rows)].reset_index(drop=True)
    for col in ("calls", "self_time_us", "share"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def done_case_ids(path: str | Path) -> set[str]:
    """case_ids that already have rows in FILE.csv (for --resume)."""
    return {key[0] for key in row_keys(path)}
