"""Interleaved A/B on one machine: `attnbench ab SUITE --baseline DIR|REV [--candidate DIR|REV]`.

Both trees are measured in one interleaved run, under the same machine load, rather than one of them
against a stored baseline measured at another time. Each side is a directory holding a checkout (its
`attnbench/` and `mechanisms/` packages), or a git revision checked out into a temporary worktree of
this repository (removed afterwards). Every round of a side is one `python -m attnbench run SUITE
--out DIR/<side>-rNN.csv` in a fresh process that imports that side's own tree (cwd and PYTHONPATH
set to it), with one round per process; the rounds alternate A B B A A B B A ..., so slow drift of the
machine (temperature, a neighbour's job) falls on both sides alike. The verdict is `attnbench gate` on
the A files against the B files, each file counting as one round. A tree whose `run` has no `--rounds`
option measures its one default round, which is the same thing.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.errors import AttnbenchError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Side:
    """One tree of the comparison."""

    spec: str  # as the user gave it
    path: Path
    revision: str = ""  # commit, where known
    worktree: bool = False  # a temporary worktree made here (removed by cleanup)
    has_rounds: bool = True  # its `run` understands --rounds

    def describe(self) -> str:
        rev = f" @ {self.revision[:12]}" if self.revision else ""
        made = " (temporary worktree)" if self.worktree else ""
        return f"{self.spec}: {self.path}{rev}{made}"


@dataclass
class Plan:
    suite: Path
    sides: dict[str, Side]
    rounds: int
    out_dir: Path
    overrides: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the plan decided for both sides (their threads)

    @property
    def order(self) -> list[str]:
        """A B B A A B B A ...: each pair of rounds swaps which side goes first."""
        return [s for i in range(self.rounds) for s in (("A", "B") if i % 2 == 0 else ("B", "A"))]


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def _is_tree(path: Path) -> bool:
    return (path / "attnbench" / "__init__.py").is_file() and (path / "mechanisms").is_dir()


def resolve_side(spec: str, repo: Path = PROJECT_ROOT) -> Side:
    """A directory holding a checkout, or a git revision of `repo` checked out into a temporary worktree."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not _is_tree(path):
            raise AttnbenchError(
                f"{spec} is a directory without attnbench/ and mechanisms/; give the root of a "
                "checkout or a git revision"
            )
        head = _git(["rev-parse", "HEAD"], path)
        return Side(spec, path.resolve(), revision=head.stdout.strip() if head.returncode == 0 else "")
    commit = _git(["rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"], repo)
    if commit.returncode != 0:
        raise AttnbenchError(
            f"{spec!r} is neither a directory nor a git revision of {repo}; give a checkout "
            "folder or a commit, branch or tag"
        )
    sha = commit.stdout.strip()
    where = Path(tempfile.mkdtemp(prefix=f"attnbench-ab-{sha[:8]}-"))
    made = _git(["worktree", "add", "--detach", str(where), sha], repo)
    if made.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        first = (made.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
        raise AttnbenchError(f"cannot check out {spec} into a temporary worktree: {first}")
    return Side(spec, where, revision=sha, worktree=True)


def _env(side: Side) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(side.path), *filter(None, [env.get("PYTHONPATH", "")])])
    return env


def _supports_rounds(side: Side) -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "attnbench", "run", "--help"],
        cwd=side.path,
        env=_env(side),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AttnbenchError(f"attnbench in {side.path} does not start: {last}")
    return "--rounds" in proc.stdout


def prepare(
    suite: str | Path,
    *,
    baseline: str,
    candidate: str | None = None,
    rounds: int = 6,
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Plan:
    """Resolve both trees (making worktrees for revisions) and the output folder; nothing is measured."""
    suite = Path(suite).resolve()
    if not suite.is_file():
        raise AttnbenchError(f"{suite}: suite file not found")
    if rounds < 3:
        raise AttnbenchError(f"--rounds {rounds}: the gate needs at least 3 rounds per side for a verdict")
    if out_dir is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_dir = Path("results") / f"ab-{stamp}"
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.glob("*.csv")):
        raise AttnbenchError(f"{out_dir} already holds result files; choose another --out")
    sides: dict[str, Side] = {}
    try:
        sides["A"] = resolve_side(baseline)
        sides["B"] = resolve_side(candidate) if candidate else Side("this checkout", PROJECT_ROOT)
        for side in sides.values():
            side.has_rounds = _supports_rounds(side)
    except BaseException:
        cleanup(Plan(suite, sides, rounds, out_dir))
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides, notes = list(overrides), []
    threads = shared_threads(suite, overrides)
    if threads is not None:  # every round of both sides with the same threads, whatever the load at its start
        overrides.append(f"threads={threads}")
        notes.append(f"threads: auto -> {threads} for every round of both sides (the cores free now)")
    return Plan(suite, sides, rounds, out_dir, overrides, notes)


def shared_threads(suite: Path, overrides: Sequence[str]) -> int | None:
    """For a CPU suite whose `threads` is auto (the default) and not set by `--set`: the thread count `auto` picks
    now (attnbench.measure.preemption), to be given to every round; else None. A round's own `auto` would
    follow the load at its start, and the two sides' rounds would then differ in threads, not only in code."""
    import yaml

    from attnbench.execute import TORCH_DEFAULT_THREADS
    from attnbench.measure import preemption

    given = dict(str(o).split("=", 1) for o in overrides if "=" in str(o))
    given = {k.strip(): v.strip() for k, v in given.items()}
    if "threads" in given:
        return None
    try:
        raw = yaml.safe_load(suite.read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or raw.get("threads", "auto") not in ("auto", None):
        return None
    device = given.get("device", raw.get("device", "auto"))
    if device == "cuda" or (device == "auto" and _cuda_available()):
        return None
    return preemption.auto_threads(TORCH_DEFAULT_THREADS, preemption.free_cores())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def execute(plan: Plan, log: Callable[[str], None] = print) -> dict[str, list[Path]]:
    """Run the rounds in A B B A order; returns the per-round CSVs of each side (measured ones kept)."""
    files: dict[str, list[Path]] = {"A": [], "B": []}
    for step, name in enumerate(plan.order):
        side = plan.sides[name]
        index = len(files[name]) + 1
        out = plan.out_dir / f"{name}-r{index:02d}.csv"
        cmd = [sys.executable, "-m", "attnbench", "run", str(plan.suite), "--out", str(out), "--no-progress"]
        if side.has_rounds:
            cmd += ["--rounds", "1"]
        for assignment in plan.overrides:
            cmd += ["--set", assignment]
        log(f"[{step + 1}/{len(plan.order)}] {name} round {index}: {out.name}")
        proc = subprocess.run(cmd, cwd=side.path, env=_env(side), capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            reason = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
            raise AttnbenchError(
                f"side {name} ({side.spec}) round {index} failed (exit {proc.returncode}): "
                f"{reason.strip()}; its earlier rounds are in {plan.out_dir}"
            )
        files[name].append(out)
    return files


def cleanup(plan: Plan) -> None:
    """Remove the temporary worktrees made for revisions."""
    for side in plan.sides.values():
        if side.worktree:
            removed = _git(["worktree", "remove", "--force", str(side.path)], PROJECT_ROOT)
            if removed.returncode != 0:
                shutil.rmtree(side.path, ignore_errors=True)
                _git(["worktree", "prune"], PROJECT_ROOT)
