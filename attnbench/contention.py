"""Contended cases: from each visit's preempted flags (attnbench.measure.preemption) to the case's rows.

Every visit of a timed case (a round, or one sweep of it) leaves its samples: `latency` (ms), `preempted`
(1/0 per repeat) and `retries` (how often the visit was timed again because most of its repeats were
preempted; attnbench.metrics.latency). When the case's last visit writes its rows, `annotate` adds:

- a `preempted` row: the fraction of all kept repeats (every round and sweep) that were preempted;
- a `retries` row: the re-timings made, so their wall-time cost is visible;
- `contended` in the note of the latency rows (after any note, joined with "; ") when a round's value still
  comes from mostly preempted repeats after the retries: with several rounds, the round's value is its
  (fastest) sweep median, so the round counts when that sweep was mostly preempted; with one round, the
  latency rows are statistics of all its repeats, so it counts when most of them were.

`is_contended(note)` is what tables, plots, `compare` and `gate` read back from a latency row.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from attnbench.measure.preemption import fraction, mostly_preempted

CONTENDED = "contended"
MARK = "†"  # after a flagged value in tables (terminal, Markdown, LaTeX)
LEGEND = (
    f"{MARK} contended: most repeats waited for a CPU core (or the GPU throttled) even after retries; "
    "re-run on a quiet machine or with fewer threads"
)
ADVICE = "re-run them on a quiet machine or with fewer threads (threads: auto)"


@dataclass(frozen=True)
class Visit:
    """One visit of a case: its round and sweep, latency repeats, their preempted flags (empty where not
    measured) and the retries made before it was kept."""

    round: int
    sweep: int
    latency: tuple[float, ...]
    preempted: tuple[float, ...] = ()
    retries: int = 0

    @classmethod
    def of(cls, round_index: int, sweep: int, samples: dict[str, list[float]]) -> Visit:
        flags = tuple(samples.get("preempted", ()))
        latency = tuple(samples.get("latency", ()))
        return cls(
            round_index,
            sweep,
            latency,
            flags if len(flags) == len(latency) else (),
            int(sum(samples.get("retries", ()))),
        )


@dataclass(frozen=True)
class Marks:
    """A case's contention over its visits."""

    preempted: float  # fraction of kept repeats that were preempted
    retries: int
    contended_rounds: int
    rounds: int

    @property
    def contended(self) -> bool:
        return self.contended_rounds > 0

    def note(self) -> str:
        if self.rounds == 1:
            return f"{CONTENDED}: {self.preempted:.0%} of repeats preempted"
        return f"{CONTENDED}: {self.contended_rounds} of {self.rounds} round values mostly preempted"


def case_marks(visits: Sequence[Visit]) -> Marks | None:
    """The case's marks, or None when no visit measured preemption (a GPU without nvidia-smi)."""
    measured = [v for v in visits if v.preempted]
    if not measured:
        return None
    flags = [f for v in measured for f in v.preempted]
    by_round: dict[int, list[Visit]] = {}
    for v in visits:
        by_round.setdefault(v.round, []).append(v)
    if len(by_round) == 1:
        contended = int(mostly_preempted(flags))
    else:
        contended = 0
        for sweeps in by_round.values():
            timed = [v for v in sweeps if v.latency]
            if timed:
                value_sweep = min(timed, key=lambda v: statistics.median(v.latency))
                contended += mostly_preempted(value_sweep.preempted)
    return Marks(fraction(flags), sum(v.retries for v in visits), contended, len(by_round))


def annotate(rows: list[dict[str, Any]], visits: Sequence[Visit]) -> list[dict[str, Any]]:
    """`rows` of a case's last visit with its `preempted` and `retries` rows added after the latency rows and,
    when contended, the latency rows' notes marked; unchanged when there are no ok latency rows."""
    latency = [i for i, r in enumerate(rows) if r.get("metric") == "latency" and r.get("status") == "ok"]
    marks = case_marks(visits)
    if not latency or marks is None:
        return rows
    out = [dict(r) for r in rows]
    if marks.contended:
        for i in latency:
            note = str(out[i].get("note") or "")
            out[i]["note"] = f"{note}; {marks.note()}" if note else marks.note()
    base = rows[latency[0]]
    what = "repeats that waited for a CPU core (or ran while the GPU throttled), over all rounds"
    extra = [
        dict(base, metric="preempted", value=marks.preempted, unit="fraction", stat="value", note=what),
        dict(base, metric="retries", value=float(marks.retries), unit="count", stat="value", note="re-timed visits"),
    ]
    at = latency[-1] + 1
    return out[:at] + extra + out[at:]


def is_contended(note: Any) -> bool:
    """Whether a latency row's note marks its case contended."""
    return isinstance(note, str) and any(part.strip().startswith(CONTENDED) for part in note.split(";"))


def contended_cases(rows) -> set[str]:
    """case_ids whose latency rows are marked contended (`rows`: a results DataFrame)."""
    if rows is None or len(rows) == 0 or "note" not in rows:
        return set()
    sel = rows[(rows["metric"] == "latency") & rows["note"].map(is_contended)]
    return {str(c) for c in sel["case_id"]}


def visits_from_samples(
    latency: dict[int, list[list[float]]], flags: dict[int, list[list[float]]], retries: dict[int, list[list[float]]]
) -> list[Visit]:
    """A resumed case's visits of its finished rounds (attnbench.rounds.prior_from_samples of each metric)."""
    out = []
    for rnd, sweeps in sorted(latency.items()):
        for sweep, values in enumerate(sweeps):
            samples = {"latency": values}
            for name, by_round in (("preempted", flags), ("retries", retries)):
                got = by_round.get(rnd)
                if got is not None and sweep < len(got):
                    samples[name] = got[sweep]
            out.append(Visit.of(rnd, sweep, samples))
    return out


def count(cases: Iterable[str]) -> str:
    """'N case(s) contended: ...' for the end-of-run summary."""
    n = len(set(cases))
    return f"{n} case{'s' if n != 1 else ''} {CONTENDED} (most repeats waited for a core even after retries): {ADVICE}"
