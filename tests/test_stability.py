"""attnbench env --stability: the host-noise probe (tiny op timed in windows)."""

from __future__ import annotations

import math

import pytest

from attnbench.cli import main
from attnbench.measure import stability


def test_probe_reports_windows_and_spread():
    result = stability.probe(0.6)
    assert result.windows >= 2  # 0.25 s windows; the last may overrun the end
    assert 0 < result.fast_us <= result.median_us
    assert math.isfinite(result.log_sd) and result.log_sd >= 0
    assert 0.0 <= result.slow_fraction <= 1.0
    assert result.steady == (result.log_sd <= stability.UNSTEADY_LOG_SD)
    assert ("steady" if result.steady else "UNSTEADY") in result.summary()


@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan])
def test_probe_refuses_non_positive_or_non_finite_time(seconds):
    with pytest.raises(ValueError, match="positive"):
        stability.probe(seconds)


def test_env_stability_cli(capsys):
    assert main(["env", "--device", "cpu", "--stability", "0.5"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "windows of 0.25 s" in out and "log-sd of window medians" in out


@pytest.mark.parametrize("value", ["-1", "0", "inf", "nan"])
def test_env_stability_cli_rejects_bad_seconds(capsys, value):
    assert main(["env", "--device", "cpu", "--stability", value]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "positive number of seconds" in err[0]
    assert captured.out == ""  # refused before the fingerprint is printed
