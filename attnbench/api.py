"""The Python API: run a suite and read results as pandas DataFrames, for notebooks and scripts.

    import attnbench

    df = attnbench.run("smoke", rounds=1)  # a shipped suite by name; rows as in the CSV a run writes
    df = attnbench.run(
        {"name": "mine", "mechanisms": ["softmax_sdpa", "rala_eager"], "level": "op", "resolution": [7, 14]},
        out="results/mine.csv",
        overrides={"repeats.min": 5},
    )
    df = attnbench.load("results/mine.csv")
    samples = attnbench.load_samples("results/mine.csv")

A thin layer over the CLI's code paths (`attnbench.suite.load_suite`, `attnbench.runner.run_suite`,
`attnbench.results.load`): the same suite checks, the same rows, the same one-line AttnbenchError messages.
Rounds run in fresh worker processes (`forkserver` on CPU where available, else `spawn`: attnbench.isolation),
which import the caller's main module again: a script (not a notebook) calls `run` under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from attnbench.errors import AttnbenchError, ResultsError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load", "load_samples", "run"]

SuiteSource = Union[str, Path, Mapping[str, Any]]


def run(
    suite: SuiteSource,
    *,
    out: str | Path | None = None,
    rounds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run `suite` and return its rows as `load` reads them from the results CSV.

    suite: a suite YAML file's path, a shipped suite's name ("smoke", "resolution", ...: `attnbench.suite.
    shipped_suites`), or a mapping of suite keys (relative plugin paths then resolve against the working
    directory). overrides: suite keys applied as the CLI's `--set` applies them, e.g. {"repeats.min": 3,
    "device": "cpu"}. rounds: the suite key `rounds` (the CLI's --rounds; it wins over overrides).
    out: the results CSV to write, with its companions FILE.samples.csv, FILE.env.json and FILE.suite.yaml;
    it must not exist yet. None: the run writes into a temporary folder that is removed once the rows are
    read. progress: a live progress bar (rich) on stdout; otherwise the run prints nothing.

    The built-in mechanisms and installed entry points are loaded first, as the CLI loads them; a suite's
    `plugins:` are loaded with the suite. Errors a user can cause raise AttnbenchError (a SuiteError for a
    suite, a ResultsError for `out`).
    """
    from attnbench.loading import load_mechanisms
    from attnbench.results import check_out_path
    from attnbench.suite import load_suite
    from attnbench.userinput import slug

    if overrides is not None and not isinstance(overrides, Mapping):
        raise AttnbenchError(
            f"overrides must be a mapping of suite keys, e.g. {{'repeats.min': 3}}, not {type(overrides).__name__}"
        )
    settings = dict(overrides or {})
    if rounds is not None:
        settings["rounds"] = rounds
    load_mechanisms()
    resolved = load_suite(suite, settings)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="attnbench-") as folder:
            path = Path(folder) / f"{slug(resolved.name)}.csv"
            _run(resolved, path, progress)
            return load(path)
    path = check_out_path(out)
    if path.exists() and path.stat().st_size > 0:
        raise ResultsError(f"{path} already exists; choose another out (attnbench.run writes a new results file)")
    _run(resolved, path, progress)
    return load(path)


def _run(suite: Any, path: Path, progress: bool) -> None:
    from attnbench.runner import run_suite

    if not progress:
        run_suite(suite, path)
        return
    from attnbench.cli_render import RichProgress

    with RichProgress(enabled=True) as bar:
        run_suite(suite, path, progress=bar)


def load(path: str | Path) -> pd.DataFrame:
    """The rows of a results CSV (written by `attnbench run` or `attnbench.run`) as a typed DataFrame, as
    `attnbench report` reads them: `value` float, shape columns nullable integers, one row per (case_id,
    metric, stat, note, source). A missing file, a folder, or a file without the results columns raises
    ResultsError; single bad lines are skipped with a warning."""
    from attnbench import results

    path = Path(path)
    if path.name.endswith(".samples.csv"):
        raise ResultsError(
            f"{path} holds the raw repeat samples; read it with attnbench.load_samples, or pass the results "
            "FILE.csv to attnbench.load"
        )
    return results.load(path)


def load_samples(path: str | Path) -> pd.DataFrame:
    """The raw repeat samples (case_id, metric, round, sweep, rep, value) of a run: `path` is its results
    FILE.csv (the samples are read from FILE.samples.csv beside it) or the samples file itself. A missing
    or malformed file raises ResultsError."""
    from attnbench import results

    return results.load_samples(path)
