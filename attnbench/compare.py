"""Align two runs (two GPUs, two commits) case by case: per-case ratio B/A of a metric, and what differs
in their environments.

Alignment: cases match on IDENTITY = (mechanism, level, variant, pass, dtype, batch, height, width, heads,
head_dim, dim). Not on case_id, which hashes the device and the mechanism options too, and not on
env_id/device: "cuda" on an H100 and "cuda" on an H200 (or cpu against cuda) are exactly what one
compares. Options are not in the rows, so a mechanism whose suite options changed between the runs
still aligns (compare FILE.suite.yaml). A side with several cases of one identity (e.g. two devices in
one file) keeps its last and says so in `CompareMeta.notes`.

Per case: median_a, median_b, ratio = median_b / median_a (< 1: B faster for latency) and its interval:
a seeded percentile bootstrap CI of the ratio of medians when both FILE.samples.csv have >= 5 raw
repeats of the case, else the p20-p80 band of each side propagated in quadrature in log space (see
`attnbench.analysis`); `interval` names which. Cases on one side only, or not ok on one side, have no
ratio; `presence` says where each case was found. A case contended on either side (attnbench.contention) is
`unsteady`: its ratio is shown, marked, and left out of the geometric mean. The environment summary reads
FILE.env.json (the env_ids that the rows use): device name, CPU, torch/triton/CUDA/driver versions, threads,
TF32, commit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench import analysis, results, stats
from attnbench.contention import contended_cases
from attnbench.errors import ResultsError
from attnbench.labels import case_label
from attnbench.tables import Table, fmt_number

IDENTITY = ("mechanism", "level", "variant", "pass", "dtype", "batch", "height", "width", "heads", "head_dim", "dim")


@dataclass(frozen=True)
class EnvField:
    """One environment property of both runs ('?' where a run does not record it)."""

    name: str
    a: str
    b: str

    @property
    def differs(self) -> bool:
        return self.a != self.b


@dataclass(frozen=True)
class CompareMeta:
    """What a comparison covered: files, counts, the geometric-mean ratio, environment, notes."""

    path_a: str
    path_b: str
    metric: str
    unit: str
    n_both: int  # identities present in both runs
    n_ratio: int  # of those, ok with a value on both sides
    n_only_a: int
    n_only_b: int
    geomean_ratio: float  # exp(mean(log ratio)) over the n_ratio cases, unsteady ones left out; NaN if none
    env: tuple[EnvField, ...] = ()
    notes: tuple[str, ...] = ()
    n_unsteady: int = 0  # of the n_ratio cases, those contended on a side

    @property
    def env_differences(self) -> tuple[EnvField, ...]:
        return tuple(f for f in self.env if f.differs)

    def summary(self) -> str:
        """One line for under the table."""
        line = f"{self.n_ratio} of {self.n_both} common cases compared"
        if math.isfinite(self.geomean_ratio):
            steady = f" over the {self.n_ratio - self.n_unsteady} steady ones" if self.n_unsteady else ""
            line += f"; geometric mean {self.metric} ratio B/A = {self.geomean_ratio:.3g}{steady}"
        if self.n_unsteady:
            line += f"; {self.n_unsteady} unsteady (contended on a side: re-run them quietly)"
        if self.n_only_a or self.n_only_b:
            line += f"; {self.n_only_a} only in A, {self.n_only_b} only in B"
        return line


def _side(rows: pd.DataFrame, samples: pd.DataFrame | None, metric: str) -> tuple[pd.DataFrame, int]:
    """One line per identity: status, center/p20/p80/n of `metric`, case_id, raw samples; duplicates dropped."""
    vals = analysis.metric_frame(rows, metric)[["case_id", "center", "p20", "p80", "n"]]
    vals = vals.assign(contended=vals["case_id"].isin(contended_cases(rows)))
    side = analysis.cases(rows).merge(vals, on="case_id", how="left")
    raw = stats.samples_by_case(samples, metric)
    side["samples"] = [raw.get(str(c)) for c in side["case_id"]]
    deduped = side.drop_duplicates(list(IDENTITY), keep="last")
    return deduped, len(side) - len(deduped)


def compare_frames(
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    *,
    samples_a: pd.DataFrame | None = None,
    samples_b: pd.DataFrame | None = None,
    metric: str = "latency",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per identity: IDENTITY, tokens, presence ("both" | "only_a" | "only_b"), status_a, status_b,
    median_a, median_b, ratio (B/A), low, high, interval, n_a, n_b, unsteady (contended on a side: its ratio is
    shown but says nothing about the code), case_id_a, case_id_b; A's order first."""
    a, _ = _side(rows_a, samples_a, metric)
    b, _ = _side(rows_b, samples_b, metric)
    a, b = a.assign(_order_a=range(len(a))), b.assign(_order_b=range(len(b)))
    m = a.drop(columns="tokens").merge(b, on=list(IDENTITY), how="outer", suffixes=("_a", "_b"), indicator=True)
    m = m.sort_values(["_order_a", "_order_b"], na_position="last", kind="stable").reset_index(drop=True)
    m["tokens"] = (m["height"] * m["width"]).astype("Int64")
    m["presence"] = m["_merge"].map({"both": "both", "left_only": "only_a", "right_only": "only_b"}).astype(str)
    num = m[["center_b", "p20_b", "p80_b"]].set_axis(["center", "p20", "p80"], axis=1)
    den = m[["center_a", "p20_a", "p80_a"]].set_axis(["center", "p20", "p80"], axis=1)
    keys = ["/".join(str(m.at[i, k]) for k in IDENTITY) for i in m.index]
    low, high, kinds = stats.ratio_intervals(
        num, den, list(m["samples_b"]), list(m["samples_a"]), keys, confidence=confidence, n_boot=n_boot, seed=seed
    )
    ratio = (m["center_b"] / m["center_a"]).to_numpy(float)
    has = np.isfinite(ratio)
    out = m[list(IDENTITY)].assign(
        tokens=m["tokens"],
        presence=m["presence"],
        status_a=m["status_a"].fillna(""),
        status_b=m["status_b"].fillna(""),
        median_a=m["center_a"],
        median_b=m["center_b"],
        ratio=ratio,
        low=np.where(has, low, np.nan),
        high=np.where(has, high, np.nan),
        interval=[k if h else "" for k, h in zip(kinds, has)],
        n_a=m["n_a"],
        n_b=m["n_b"],
        unsteady=m["contended_a"].eq(True) | m["contended_b"].eq(True),
        case_id_a=m["case_id_a"].fillna(""),
        case_id_b=m["case_id_b"].fillna(""),
    )
    return out


def env_summary(rows: pd.DataFrame, envs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Headline environment of a run (its rows' env_ids in FILE.env.json); several envs joined with ' / '."""
    ids = list(dict.fromkeys(rows["env_id"])) if "env_id" in rows else []
    fps = [envs[i] for i in ids if i in envs]
    if not fps:
        return {}

    def one(fp: Mapping[str, Any]) -> dict[str, str]:
        versions = fp.get("versions") or {}
        commit = fp.get("git_commit")
        commit_txt = f"{commit[:12]}{' (dirty)' if fp.get('git_dirty') else ''}" if commit else "?"
        mem = fp.get("gpu_memory_bytes")
        return {
            "device": str(fp.get("gpu_name") or fp.get("device") or "?"),
            "device memory": f"{mem / 2**30:.0f} GiB" if mem else "?",
            "cpu": str(fp.get("cpu_model") or "?"),
            "torch": str(versions.get("torch") or "?"),
            "triton": str(versions.get("triton") or "?"),
            "cuda": str(fp.get("cuda_version") or "?"),
            "driver": str(fp.get("driver") or "?"),
            "threads": str(fp.get("torch_threads") or "?"),
            "tf32 matmul": str(fp.get("tf32_matmul", "?")),
            "git commit": commit_txt,
        }

    each = [one(fp) for fp in fps]
    return {k: " / ".join(dict.fromkeys(e[k] for e in each)) for k in each[0]}


def env_fields(env_a: Mapping[str, str], env_b: Mapping[str, str]) -> tuple[EnvField, ...]:
    """Every property either side records, A's order first."""
    names = list(dict.fromkeys([*env_a, *env_b]))
    return tuple(EnvField(n, env_a.get(n, "?"), env_b.get(n, "?")) for n in names)


def read_env(path: Path) -> dict[str, Any]:
    """env_id -> fingerprint from the results file's FILE.env.json ({} when it is missing)."""
    env_path = results.companion(path, "env.json")
    if not env_path.is_file():
        return {}
    try:
        return json.loads(env_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{env_path} is not readable JSON ({exc}); restore it or delete it") from exc


def hardware_label(fp: Mapping[str, Any]) -> str:
    """What a fingerprint says the numbers were measured on: the suite's hardware kind, else the GPU name,
    else the CPU model."""
    if fp.get("hardware_kind"):
        return str(fp["hardware_kind"])
    if fp.get("gpu_name"):
        return str(fp["gpu_name"])
    return f"cpu {fp.get('cpu_model') or '?'}"


def run_hardware(path: str | Path, rows: pd.DataFrame) -> set[str]:
    """Hardware labels of the environments that `rows` (of results file `path`) were measured in; empty when
    FILE.env.json is missing or names none of them."""
    envs = read_env(Path(path))
    ids = set(rows["env_id"]) if "env_id" in rows else set()
    return {hardware_label(envs[i]) for i in ids if isinstance(envs.get(i), Mapping)}


def check_same_hardware(label_a: str, hw_a: set[str], label_b: str, hw_b: set[str]) -> None:
    """Refuse to pair runs measured on different hardware (unknown hardware on a side is not refused)."""
    if hw_a and hw_b and hw_a != hw_b:
        raise ResultsError(
            f"{label_a} was measured on {' + '.join(sorted(hw_a))} but {label_b} on "
            f"{' + '.join(sorted(hw_b))}; pass --across-hardware to compare them anyway"
        )


def compare_runs(
    path_a: str | Path,
    path_b: str | Path,
    *,
    metric: str = "latency",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    across_hardware: bool = False,
) -> tuple[pd.DataFrame, CompareMeta]:
    """Load two results CSVs (with their samples and env files when present) and compare them (B/A).
    Runs whose env files name different hardware are refused unless `across_hardware`."""
    path_a, path_b = Path(path_a), Path(path_b)
    rows_a, rows_b = results.load(path_a), results.load(path_b)
    if not across_hardware:
        check_same_hardware(str(path_a), run_hardware(path_a, rows_a), str(path_b), run_hardware(path_b, rows_b))
    samples, notes = [], []
    for path in (path_a, path_b):
        has = results.companion(path, "samples.csv").is_file()
        samples.append(results.load_samples(path) if has else None)
        if not has:
            notes.append(f"{path} has no samples file: its intervals are p20-p80 bands, not bootstrap CIs")
    frame = compare_frames(
        rows_a,
        rows_b,
        samples_a=samples[0],
        samples_b=samples[1],
        metric=metric,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )
    for path, rows in ((path_a, rows_a), (path_b, rows_b)):
        dropped = _side(rows, None, metric)[1]
        if dropped:
            notes.append(
                f"{path}: {dropped} cases share an identity with a later one (another device or options) "
                "and were left out"
            )
    env_a, env_b = env_summary(rows_a, read_env(path_a)), env_summary(rows_b, read_env(path_b))
    if not env_a or not env_b:
        notes.append(
            "no environment recorded for "
            + " and ".join(str(p) for p, e in ((path_a, env_a), (path_b, env_b)) if not e)
            + " (FILE.env.json missing)"
        )
    both = frame[frame["presence"] == "both"]
    ratios = both["ratio"].to_numpy(float)
    has = np.isfinite(ratios) & (ratios > 0)
    unsteady = has & both["unsteady"].to_numpy(bool)
    ok = ratios[has & ~unsteady]
    if unsteady.any():
        notes.append(
            f"{int(unsteady.sum())} case(s) are unsteady: contended in A or B (most repeats waited for a CPU core, or "
            "the GPU throttled, even after retries); their ratios are shown but left out of the geometric mean: "
            "re-run them on a quiet machine or with fewer threads"
        )
    units = rows_a.loc[(rows_a["metric"] == metric) & rows_a["stat"].isin(("median", "value")), "unit"]
    meta = CompareMeta(
        path_a=str(path_a),
        path_b=str(path_b),
        metric=metric,
        unit=str(units.iloc[0]) if len(units) else "",
        n_both=len(both),
        n_ratio=int(has.sum()),
        n_unsteady=int(unsteady.sum()),
        n_only_a=int((frame["presence"] == "only_a").sum()),
        n_only_b=int((frame["presence"] == "only_b").sum()),
        geomean_ratio=float(np.exp(np.log(ok).mean())) if ok.size else math.nan,
        env=env_fields(env_a, env_b),
        notes=tuple(notes),
    )
    return frame, meta


def comparison_tables(frame: pd.DataFrame, meta: CompareMeta) -> list[Table]:
    """For the terminal / Markdown / LaTeX: per-case medians and ratio [interval], then the environments."""
    lines = []
    for _, r in frame.iterrows():
        name = case_label(r.to_dict())
        if math.isfinite(r["ratio"]):
            ratio = fmt_number(r["ratio"])
            if pd.notna(r["low"]):
                ratio += f" [{fmt_number(r['low'])}, {fmt_number(r['high'])}]"
        else:
            ratio = {"only_a": "only in A", "only_b": "only in B"}.get(r["presence"], "")
        status = r["status_a"] if r["status_a"] not in ("", "ok") else r["status_b"]
        if status == "ok" and r["unsteady"]:
            status = "unsteady"
        lines.append(
            {
                "case": name,
                f"A {meta.unit}": fmt_number(r["median_a"]) or r["status_a"],
                f"B {meta.unit}": fmt_number(r["median_b"]) or r["status_b"],
                "B/A": ratio,
                "interval": r["interval"],
                "status": "" if status == "ok" else status,
            }
        )
    cases = Table(
        f"compare {meta.metric}: B = {meta.path_b} vs A = {meta.path_a}",
        pd.DataFrame(lines).set_index("case") if lines else pd.DataFrame(),
    )
    env = (
        pd.DataFrame(
            [{"property": f.name, "A": f.a, "B": f.b, "differs": "*" if f.differs else ""} for f in meta.env]
        ).set_index("property")
        if meta.env
        else pd.DataFrame()
    )
    return [cases, Table("environments (* = differs)", env)]
