"""The scale-out tests' suite: test_sleepy (tests/plugins/sleepy.py) beside softmax_sdpa, tiny and fast;
shared by tests/test_scale_out.py (local worker pool) and tests/test_ray_executor.py (Ray)."""

from __future__ import annotations

from pathlib import Path

SLEEPY = Path(__file__).resolve().parent / "plugins" / "sleepy.py"


def sleepy_suite(name: str) -> str:
    """YAML text (indented by 4, dedent before use) of the suite named `name`: 2 resolutions x 2 batches, 2 rounds."""
    return f"""\
    name: {name}
    plugins: [{SLEEPY}]
    mechanisms: [test_sleepy, softmax_sdpa]
    level: op
    dim: 16
    resolution: [2, 3]
    batch: [1, 2]
    device: cpu
    warmup: 0
    warmup_s: 0
    verify: false
    metrics: [latency]
    repeats: {{min: 3, max: 3, min_time_s: 0}}
    rounds: 2
    """
