"""A mechanism whose calls take a known time (for scale-out tests: kills land mid-case).

Each call sleeps 20 ms and returns q. When ATTNBENCH_TEST_PIDS names a folder, the process that runs it
leaves an empty file named after its pid there, so a test knows exactly which worker process to kill.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from attnbench.registry import Mechanism, register_mechanism


@register_mechanism("test_sleepy", family="test")
class Sleepy(Mechanism):
    def op(self, q, k, v, *, grid):
        mark = os.environ.get("ATTNBENCH_TEST_PIDS")
        if mark:
            Path(mark, str(os.getpid())).touch()
        time.sleep(0.02)
        return q
