"""Scale-out: run a sweep's cases on a local pool of device-bound workers or as Ray tasks on a cluster.

`attnbench run SUITE --workers N|auto` -> `LocalPool` (attnbench.executors.local); `--executor ray
[--address ADDR]` -> `RayExecutor` (attnbench.executors.ray_cluster). Both schedule (unit, round) tasks with
`attnbench.executors.schedule.RoundScheduler` and hand every finished case to `Runner.record`, the one
writer of the run, in the driver process. Without either option the Runner runs the sweep itself.
"""

from __future__ import annotations

from attnbench.errors import AttnbenchError
from attnbench.suite import Suite


def parse_workers(text: str | None) -> int | str | None:
    """`--workers` value: a positive integer or `auto`; None when not given."""
    if text is None:
        return None
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise AttnbenchError(f"--workers {text!r}: give a positive number of workers or `auto`") from None
    if n < 1:
        raise AttnbenchError(f"--workers {n}: give a positive number of workers (or `auto`: one per visible GPU)")
    return n


def make_executor(suite: Suite, *, executor: str = "local", workers: str | None = None, address: str | None = None):
    """The executor for the CLI options, or None for the in-process / single-worker path."""
    n = parse_workers(workers)
    if executor == "ray":
        if n is not None:
            raise AttnbenchError(
                "--workers is for the local pool; with --executor ray, Ray places one task per "
                "GPU (or per `threads` CPUs) on every node"
            )
        from attnbench.executors.ray_cluster import RayExecutor

        return RayExecutor(address=address)
    if address is not None:
        raise AttnbenchError("--address names a Ray cluster: use it with --executor ray")
    if n is None:
        if suite.hardware:
            raise AttnbenchError(
                f"the suite names hardware kinds ({', '.join(suite.hardware)}): run it with "
                "--executor ray on a cluster that has them"
            )
        return None
    from attnbench.executors.local import LocalPool

    return LocalPool(n)
