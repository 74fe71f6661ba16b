"""(unit, round) tasks for many workers, and concurrency bookkeeping per host.

The unit of work is one round of one unit (a batch ladder, `attnbench.rounds.units`): its cases run
together, ascending, so an OOM still predicts the larger batches. Tasks are offered round-major, each
round's units in that round's seeded shuffled order (`rounds.unit_order`), and a unit's round r becomes
ready only when its round r-1 has finished (the last round needs the earlier rounds' repeats as `prior`).
Workers pull the next ready task: no static shards, so cheap and expensive cases balance themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from attnbench import rounds
from attnbench.plan import Case


@dataclass(frozen=True)
class Task:
    unit: int
    round: int


class RoundScheduler:
    """Hands out ready (unit, round) tasks; pure bookkeeping, no processes."""

    def __init__(self, unit_list: Sequence[Sequence[Case]], n_rounds: int, seed: int):
        self.units = [list(u) for u in unit_list]
        self.n_rounds = n_rounds
        self.queue = [
            Task(u, r) for r in range(n_rounds) for u in rounds.unit_order(len(self.units), r, seed, n_rounds)
        ]
        self.next_round = [0] * len(self.units)  # per unit: the lowest round not finished
        self.busy: set[int] = set()  # units with a task in flight

    def next_ready(self) -> Task | None:
        """The first queued task whose unit is idle and whose earlier rounds have all finished."""
        for i, task in enumerate(self.queue):
            if task.unit not in self.busy and self.next_round[task.unit] == task.round:
                self.busy.add(task.unit)
                return self.queue.pop(i)
        return None

    def finish(self, task: Task) -> None:
        self.busy.discard(task.unit)
        self.next_round[task.unit] = task.round + 1

    @property
    def done(self) -> bool:
        return not self.queue and not self.busy


class Concurrency:
    """Cases in flight on one host. `enter()` -> token; `leave(token)` -> the most cases that were in flight at
    once while this one ran (itself included): the row's `concurrent`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, int] = {}
        self._next = 0

    def enter(self, exclusive: bool = False) -> int | None:
        """A token, or None when `exclusive` and another case is in flight (try again later)."""
        with self._lock:
            if exclusive and self._open:
                return None
            token, self._next = self._next, self._next + 1
            self._open[token] = 0
            n = len(self._open)
            for key in self._open:
                self._open[key] = max(self._open[key], n)
            return token

    def leave(self, token: int) -> int:
        with self._lock:
            return self._open.pop(token, 1)
