"""Results over commits: one series per (case, machine), ordered by commit, and the steps in it.

Pure logic behind `python -m attnbench history FILES_OR_DIRS...` (docs/ci.md, "History"): `gather` reads runs,
`build_series` lines them up, `find_steps` finds change points, `history` does all three.

Runs. A run is one results file (FILE.csv with FILE.env.json beside it; a folder is searched for such files).
Each case's rows name an env_id, whose fingerprint in FILE.env.json gives the project's commit (git_commit,
git_dirty, git_commit_date) and its machine (`attnbench.machine.machine_id`: hardware, driver, library versions
and settings without the commit; computed from the fingerprint for files that do not record it). A case's value
in a run is the median of its round medians (`stats.round_medians` over FILE.samples.csv), or the row's value
where the file has no samples. Runs of one commit (and dirty flag) are one point of a series: their round
medians pooled.

Series. One per (case, machine_id): runs on different machines are never mixed (`across_hardware` keys a
series by case alone). Points are ordered by commit order when every commit of the series is in the local git
history (`git rev-list --topo-order` in `repo`), else by run time (started_at); a note says which series fell
back.

Steps. On log values y_1..y_n of a series (n >= 2 * MIN_SEGMENT): the noise sigma is the larger of a robust
estimate from the series (MAD of successive differences / sqrt 2, insensitive to a few steps) and the runs' own
round noise (per point 1.2533 * sd of its log round medians / sqrt(rounds), the standard error of a median;
pooled), with a floor of 0.01%. PELT (`ruptures`, l2 cost on y / sigma, segments of at least MIN_SEGMENT
points, penalty PENALTY * log n) proposes change points. Each is then tested: the difference of the medians of
its two adjacent segments over its standard error, from the robust residual noise of the segmented series (MAD
of the residuals from the segments' medians, floored by the round noise), against Student's t with n - segments
degrees of freedom; a change point is kept when p <= alpha / (n - 1), Bonferroni over the n - 1 places a step
could be. While one fails, the weakest is dropped and the rest re-tested. Medians and three points a side
make one or two outlying runs unable to make a step. On flat series this flags a step in at most about alpha of
them, Gaussian or heavy-tailed noise or a single 10-sigma outlier alike, and it finds a step of 4 noise sigmas
between 5 and 7 points at its place most of the time (tests/test_history.py checks both on seeded series). A
step's change is exp(median y after - median y before) over its adjacent segments (after/before), with the t
interval at confidence 1 - alpha; `commit_before` is the last commit of the segment before it and
`commit_after` the first of the segment after, so the step's cause lies in commit_before..commit_after.
"""

from __future__ import annotations

import fnmatch
import json
import math
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnbench import results, stats
from attnbench.errors import AttnbenchError, ResultsError
from attnbench.gate import HIGHER_IS_BETTER
from attnbench.labels import case_label
from attnbench.machine import machine_id as make_machine_id

MIN_SEGMENT = 3  # commits on each side of a step: one or two odd runs are outliers, not a step
PENALTY = 3.0  # PELT penalty per change point, times log(n), on noise-scaled log values
NOISE_FLOOR = 1e-4  # relative: two runs never agree better than this
MEDIAN_SE = 1.2533  # standard error of a median / (sd / sqrt(n)) for normal data


class HistoryError(AttnbenchError):
    """History that cannot be built: no runs, no commit information, an unknown metric or case pattern."""


@dataclass(frozen=True)
class Run:
    """One case of one results file on one commit."""

    path: str
    case_id: str
    name: str
    mechanism: str
    unit: str
    commit: str
    dirty: bool
    commit_date: str
    started_at: str
    machine_id: str
    hardware: str
    rounds: np.ndarray  # round medians of the metric (one value when the file has no samples)


@dataclass(frozen=True)
class Point:
    """One commit of a series: its runs' round medians pooled."""

    commit: str
    dirty: bool
    started_at: str  # the earliest of its runs
    paths: tuple[str, ...]
    rounds: np.ndarray

    @property
    def value(self) -> float:
        return float(np.median(self.rounds))

    @property
    def label(self) -> str:
        return self.commit[:10] + ("+dirty" if self.dirty else "")

    @property
    def noise(self) -> float:
        """Standard error of the log median of its rounds (nan below 2 rounds)."""
        if self.rounds.size < 2:
            return math.nan
        return MEDIAN_SE * float(np.log(self.rounds).std(ddof=1)) / math.sqrt(self.rounds.size)


@dataclass(frozen=True)
class Series:
    case_id: str
    name: str
    mechanism: str
    unit: str
    machine_id: str  # "" when keyed across hardware
    hardware: str
    points: tuple[Point, ...]
    order: str  # "commits" | "run time"


@dataclass(frozen=True)
class Step:
    case_id: str
    name: str
    mechanism: str
    machine_id: str
    hardware: str
    index: int  # the series' first point after the step
    commit_before: str
    commit_after: str
    commits_between: int | None  # in git's commit_before..commit_after: commit_after and its ancestors not in
    # commit_before, the commits that may have caused the step (None: not in the local history)
    before: float  # median of the segment before
    after: float
    change: float  # after / before
    ci_low: float
    ci_high: float
    p: float
    runs_before: int
    runs_after: int
    direction: str  # "slower" (worse) or "faster" (better), by the metric's sense


@dataclass(frozen=True)
class HistoryResult:
    metric: str
    alpha: float
    series: tuple[Series, ...]
    steps: tuple[Step, ...]
    across_hardware: bool = False
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        checked = sum(len(s.points) >= 2 * MIN_SEGMENT for s in self.series)
        flagged = len({(s.case_id, s.machine_id) for s in self.steps})
        return (
            f"{len(self.steps)} steps in {flagged} of {checked} series checked ({len(self.series)} series, "
            f"{sum(len(s.points) for s in self.series)} points; metric {self.metric}, alpha {self.alpha:g} per series)"
        )


# -- reading runs ---------------------------------------------------------------------------------------------
def find_files(paths: Sequence[str | Path]) -> tuple[dict[Path, bool], list[str]]:
    """Results files named (True; a companion such as FILE.samples.csv stands for its FILE.csv) or found in
    folders (False; FILE.csv with FILE.env.json beside it), and notes."""
    files: dict[Path, bool] = {}
    notes: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.csv") if _is_run(p))
            if not found:
                notes.append(f"{path}: no results files (FILE.csv with FILE.env.json beside it)")
            for p in found:
                files.setdefault(p.resolve(), False)
        elif path.is_file():
            for kind in (".samples.csv", ".kernels.csv"):  # a shell glob such as runs/*.csv matches these too
                if path.name.endswith(kind):
                    path = path.with_name(path.name[: -len(kind)] + ".csv")
            files[path.resolve()] = True
        else:
            raise HistoryError(f"{str(path)[:200]} not found; pass results CSVs or folders holding them")
    if not files:
        raise HistoryError(
            f"no results files in {' '.join(map(str, paths))[:200]}; history reads FILE.csv files written by "
            "`attnbench run` with their FILE.env.json"
        )
    return files, notes


def _is_run(path: Path) -> bool:
    name = path.name
    return not name.endswith((".samples.csv", ".kernels.csv")) and results.companion(path, "env.json").is_file()


def _read_env(path: Path) -> dict[str, dict]:
    env_path = results.companion(path, "env.json")
    if not env_path.is_file():
        raise HistoryError(
            f"{path} has no {env_path.name} beside it, so its commit is unknown; history needs the env file "
            "that `attnbench run` writes"
        )
    try:
        envs = json.loads(env_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HistoryError(f"{env_path} is not readable JSON ({str(exc)[:120]}); restore it") from None
    if not isinstance(envs, dict):
        raise HistoryError(f"{env_path} is not an env file (an object env_id -> fingerprint); restore it")
    return {k: v for k, v in envs.items() if isinstance(v, dict)}


def read_runs(path: Path, metric: str) -> tuple[list[Run], set[str]]:
    """The runs (one per case measured ok) of `metric` in one results file, and every metric the file has."""
    from attnbench.compare import hardware_label

    rows = results.load(path)
    envs = _read_env(path)
    metrics = set(rows["metric"])
    rows = rows[(rows["metric"] == metric) & (rows["status"] == "ok") & rows["value"].notna()]
    if rows.empty:
        return [], metrics
    samples = results.load_samples(path) if results.companion(path, "samples.csv").is_file() else None
    medians = stats.round_medians(samples, metric)
    runs = []
    for case_id, g in rows.groupby("case_id", sort=False):
        first = g.iloc[-1].to_dict()
        fp = envs.get(str(first["env_id"]))
        if fp is None or not fp.get("git_commit"):
            raise HistoryError(
                f"{path}: case {case_id} has no git commit in {results.companion(path, 'env.json').name} "
                "(measured outside a git checkout?); history orders runs by commit: drop this file"
            )
        stat_rows = g[g["stat"] == "median"] if (g["stat"] == "median").any() else g
        own = medians.get(str(case_id))
        values = own if own is not None and own.size else stat_rows["value"].to_numpy(float)[-1:]
        values = values[np.isfinite(values) & (values > 0)]
        if not values.size:
            continue
        runs.append(
            Run(
                path=str(path),
                case_id=str(case_id),
                name=case_label(first),
                mechanism=str(first.get("mechanism") or ""),
                unit=str(first.get("unit") or ""),
                commit=str(fp["git_commit"]),
                dirty=bool(fp.get("git_dirty")),
                commit_date=str(fp.get("git_commit_date") or ""),
                started_at=str(g["started_at"].min() or ""),
                machine_id=make_machine_id(fp),
                hardware=hardware_label(fp),
                rounds=values,
            )
        )
    return runs, metrics


def gather(
    paths: Sequence[str | Path], metric: str = "latency", case: str | None = None
) -> tuple[list[Run], list[str]]:
    """Every run of `metric` in `paths` (files or folders), optionally only cases whose case_id or name matches
    the glob `case` (case-insensitive)."""
    files, notes = find_files(paths)
    runs: list[Run] = []
    seen_metrics: set[str] = set()
    skipped: list[str] = []
    for path, named in files.items():
        try:
            found, metrics = read_runs(path, metric)
        except (HistoryError, ResultsError) as exc:
            if named:
                raise
            skipped.append(" ".join(str(exc).split())[:300])
            continue
        runs += found
        seen_metrics |= metrics
    if skipped:
        notes.append(f"{len(skipped)} file(s) found in folders skipped; the first: {skipped[0]}")
    if not runs:
        raise HistoryError(
            f"no {metric!r} results in {len(files)} files (they have: {', '.join(sorted(seen_metrics)) or 'none'}); "
            "check --metric"
        )
    if case:
        pattern = case.lower()
        runs = [
            r for r in runs if fnmatch.fnmatch(r.case_id.lower(), pattern) or fnmatch.fnmatch(r.name.lower(), pattern)
        ]
        if not runs:
            raise HistoryError(
                f"no case matches --case {case[:80]!r} (a glob on the case id or its name, e.g. '*rala*')"
            )
    return runs, notes


# -- series ---------------------------------------------------------------------------------------------------
def _git(repo: Path, *args: str, stdin: str | None = None) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def commit_positions(commits: Iterable[str], repo: Path) -> dict[str, int]:
    """commit -> position in the topological order of `repo`'s history (oldest first), for the commits it has."""
    wanted = sorted(set(commits))
    if not wanted:
        return {}
    checked = _git(repo, "cat-file", "--batch-check=%(objectname) %(objecttype)", stdin="\n".join(wanted) + "\n")
    if checked is None:
        return {}
    known = [c for c, line in zip(wanted, checked.splitlines()) if line.endswith(" commit")]
    if not known:
        return {}
    listed = _git(repo, "rev-list", "--topo-order", "--reverse", *known)
    order = {c: i for i, c in enumerate((listed or "").split())}
    return {c: order[c] for c in known if c in order}


def build_series(runs: Sequence[Run], repo: Path, *, across_hardware: bool = False) -> tuple[list[Series], list[str]]:
    """Runs grouped into series and points, each series ordered (module docstring), and notes."""
    positions = commit_positions((r.commit for r in runs), repo)
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.case_id, "" if across_hardware else r.machine_id), []).append(r)
    series, by_time = [], 0
    for (case_id, machine), members in groups.items():
        by_commit: dict[tuple[str, bool], list[Run]] = {}
        for r in members:
            by_commit.setdefault((r.commit, r.dirty), []).append(r)
        points = [
            Point(
                commit=c,
                dirty=d,
                started_at=min(r.started_at for r in rs),
                paths=tuple(dict.fromkeys(r.path for r in rs)),
                rounds=np.concatenate([r.rounds for r in rs]),
            )
            for (c, d), rs in by_commit.items()
        ]
        in_git = all(p.commit in positions for p in points)
        if in_git:
            points.sort(key=lambda p: (positions[p.commit], p.dirty, p.started_at))
        else:
            points.sort(key=lambda p: p.started_at)
            by_time += len(points) > 1
        first = members[0]
        series.append(
            Series(
                case_id=case_id,
                name=first.name,
                mechanism=first.mechanism,
                unit=first.unit,
                machine_id=machine,
                hardware=" + ".join(sorted({r.hardware for r in members})),
                points=tuple(points),
                order="commits" if in_git else "run time",
            )
        )
    notes = []
    if by_time:
        notes.append(
            f"{by_time} series have commits that are not in the git history of {repo}: they are ordered by run time "
            "(started_at); run history inside the project's checkout, with its history fetched, to order by commit"
        )
    machines = {r.machine_id for r in runs}
    if len(machines) > 1 and not across_hardware:
        notes.append(f"runs from {len(machines)} machines (machine_id) are kept in separate series")
    return series, notes


# -- change points --------------------------------------------------------------------------------------------
def series_noise(y: np.ndarray, point_noise: np.ndarray) -> tuple[float, float]:
    """(sigma for PELT, floor from the rounds): the larger of the MAD of successive differences / sqrt 2 and the
    pooled round noise, and the round noise alone (NOISE_FLOOR at least)."""
    d = np.diff(y)
    mad = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2) if d.size else 0.0
    known = point_noise[np.isfinite(point_noise)]
    floor = max(math.sqrt(float(np.mean(known**2))) if known.size else 0.0, NOISE_FLOOR)
    return max(mad, floor), floor


def _segment_test(segments: list[np.ndarray], i: int, floor: float, n: int) -> tuple[float, float, float, int]:
    """(p, diff, se, dof) of the test between segments i and i+1: diff of their medians over its standard error
    from the robust residual noise of the segmented series (MAD of the residuals from each segment's median,
    dof-corrected; `floor` at least), against Student's t with n - segments degrees of freedom."""
    from scipy import stats as sst

    residuals = np.concatenate([s - np.median(s) for s in segments])
    dof = max(n - len(segments), 1)
    sd = max(1.4826 * float(np.median(np.abs(residuals))) * math.sqrt(n / dof), floor)
    a, b = segments[i], segments[i + 1]
    se = MEDIAN_SE * sd * math.sqrt(1 / a.size + 1 / b.size)
    diff = float(np.median(b) - np.median(a))
    p = float(2 * sst.t.sf(abs(diff) / se, dof))
    return p, diff, se, dof


def find_steps(
    y: np.ndarray, point_noise: np.ndarray | None = None, *, alpha: float = 0.05
) -> list[tuple[int, float, float, float, float]]:
    """Change points of log values `y` (module docstring): (index of the first point after, p, change, ci_low,
    ci_high) each, change and interval as ratios after/before."""
    import ruptures
    from scipy import stats as sst

    y = np.asarray(y, float)
    n = y.size
    if n < 2 * MIN_SEGMENT:
        return []
    noise = np.full(n, math.nan) if point_noise is None else np.asarray(point_noise, float)
    sigma, floor = series_noise(y, noise)
    algo = ruptures.Pelt(model="l2", min_size=MIN_SEGMENT, jump=1).fit((y / sigma).reshape(-1, 1))
    cuts = [int(b) for b in algo.predict(pen=PENALTY * math.log(n))[:-1]]
    level = alpha / (n - 1)
    while cuts:
        edges = [0, *cuts, n]
        segments = [y[edges[k] : edges[k + 1]] for k in range(len(edges) - 1)]
        tests = [_segment_test(segments, k, floor, n) for k in range(len(cuts))]
        worst = max(range(len(cuts)), key=lambda k: tests[k][0])
        if tests[worst][0] <= level:
            out = []
            for cut, (p, diff, se, dof) in zip(cuts, tests):
                half = float(sst.t.ppf(1 - alpha / 2, dof)) * se
                out.append((cut, p, math.exp(diff), math.exp(diff - half), math.exp(diff + half)))
            return out
        del cuts[worst]
    return []


def series_steps(s: Series, metric: str, alpha: float, repo: Path, between: dict) -> list[Step]:
    y = np.log([p.value for p in s.points])
    found = find_steps(y, np.array([p.noise for p in s.points]), alpha=alpha)
    cuts = [0, *(f[0] for f in found), len(y)]
    steps = []
    for k, (cut, p, change, low, high) in enumerate(found):
        before, after = s.points[cut - 1], s.points[cut]
        span = (before.commit, after.commit)
        if span not in between:
            counted = _git(repo, "rev-list", "--count", f"{span[0]}..{span[1]}") if s.order == "commits" else None
            between[span] = int(counted) if counted and counted.strip().isdigit() else None
        worse = change < 1 if metric in HIGHER_IS_BETTER else change > 1
        steps.append(
            Step(
                case_id=s.case_id,
                name=s.name,
                mechanism=s.mechanism,
                machine_id=s.machine_id,
                hardware=s.hardware,
                index=cut,
                commit_before=before.commit,
                commit_after=after.commit,
                commits_between=between[span],
                before=float(np.exp(np.median(y[cuts[k] : cut]))),
                after=float(np.exp(np.median(y[cut : cuts[k + 2]]))),
                change=change,
                ci_low=low,
                ci_high=high,
                p=p,
                runs_before=cut - cuts[k],
                runs_after=cuts[k + 2] - cut,
                direction="slower" if worse else "faster",
            )
        )
    return steps


def history(
    paths: Sequence[str | Path],
    *,
    metric: str = "latency",
    case: str | None = None,
    alpha: float = 0.05,
    across_hardware: bool = False,
    repo: str | Path = ".",
) -> HistoryResult:
    """Gather the runs in `paths`, build the series and find their steps (module docstring). `repo` is the git
    checkout whose history orders commits."""
    if not 0 < alpha < 1:
        raise HistoryError(f"alpha {alpha} must lie strictly between 0 and 1, e.g. 0.05")
    runs, notes = gather(paths, metric, case)
    series, order_notes = build_series(runs, Path(repo), across_hardware=across_hardware)
    short = sum(len(s.points) < 2 * MIN_SEGMENT for s in series)
    if short:
        notes.append(
            f"{short} of {len(series)} series have fewer than {2 * MIN_SEGMENT} commits and are not checked for "
            f"steps (a step needs {MIN_SEGMENT} commits on each side)"
        )
    between: dict = {}
    steps = [step for s in series for step in series_steps(s, metric, alpha, Path(repo), between)]
    return HistoryResult(
        metric=metric,
        alpha=alpha,
        series=tuple(series),
        steps=tuple(steps),
        across_hardware=across_hardware,
        notes=tuple(notes + order_notes),
    )
