"""report --html: one self-contained page from real tiny runs, checked as text and rendered in headless Chromium.

The page comes from a real run (softmax_sdpa and rala_eager, op level, 4x4 and 8x8 tokens, in this process)
and a copy of it whose env file names another machine, so the page has a panel per machine in each figure.
The Chromium checks need Debian's `chromium`: the session fixture installs it with apt-get where it is missing
and this process may (root with apt-get), else skips them with the reason. The screenshot is kept as a test
artefact: <pytest's tmp dir>/html*/report.png (`pytest --basetemp=DIR` puts it under DIR).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import attnbench
from attnbench import cli, html_report

TINY = {
    "name": "tiny-html",
    "mechanisms": ["softmax_sdpa", "rala_eager"],
    "level": "op",
    "pass": "fwd",
    "resolution": [4, 8],
    "dim": 16,
    "heads": 1,
    "batch": 1,
    "dtype": "fp32",
    "device": "cpu",
    "threads": 1,
    "isolation": "inprocess",
    "metrics": ["latency", "memory"],
    "warmup": 1,
    "warmup_s": 0,
    "repeats": {"min": 3, "max": 3, "min_time_s": 0},
}
OTHER = "other-box"  # the hardware kind the copy's env file names


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The --html page of a tiny real run (2 rounds) and its copy from 'another machine'."""
    pytest.importorskip("matplotlib")
    folder = tmp_path_factory.mktemp("html")
    a = folder / "box-a.csv"
    attnbench.run(TINY, out=a, rounds=2)
    b = folder / "box-b.csv"
    for suffix in (".csv", ".samples.csv", ".suite.yaml"):
        shutil.copy(str(a)[:-4] + suffix, str(b)[:-4] + suffix)
    envs = json.loads((folder / "box-a.env.json").read_text())
    (folder / "box-b.env.json").write_text(json.dumps({k: {**v, "hardware_kind": OTHER} for k, v in envs.items()}))
    out = folder / "report.html"
    argv = ["report", str(a), str(b), "--html", str(out), "--baseline", "softmax_sdpa", "--format", "csv"]
    argv += ["--crossover", "softmax_sdpa", "rala_eager", "--title", "Tiny <runs> & co"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(argv) == 0
    return out


def test_page_is_self_contained_with_the_report_sections(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)  # no URL at all: nothing to fetch
    assert not re.search(r"\b(src|href)=\"(?!#)", text)  # only links within the page
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert "<title>Tiny &lt;runs&gt; &amp; co</title>" in text  # escaped
    for anchor in ("overview", "latency", "peak_memory", "speedup", "crossover", "scaling", "environment"):
        assert f'<section id="{anchor}">' in text, anchor
    assert text.count("<figure>") == text.count("<svg") >= 3  # latency, memory, speed-up figures, inline
    assert '<th scope="col">4x4</th><th scope="col">8x8</th>' in text  # one column label convention
    assert "Median forward latency per call (ms) of the attention operator" in text  # captions in words
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # every figure's SVG ids made unique
    latency = text[text.index('<section id="latency">') : text.index('<section id="peak_memory">')]
    assert OTHER in latency and "cpu " in latency  # a panel per machine, titled with its hardware


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label", "tab:x"], "add --format latex"),
        (["--mechanisms", "nope"], "--mechanisms: nope has no rows"),
        (["--mechanisms", " , "], "comma-separated list"),
        (["--html", "out.txt"], "ending in .html"),
        (["--html", "/proc/nope/out.html"], "choose another --html path"),
    ],
)
def test_report_option_errors(page, capsys, extra, message):
    rc = cli.main(["report", str(page.parent / "box-a.csv"), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err


def test_mechanisms_title_and_label_in_latex(page, capsys):
    csv = str(page.parent / "box-a.csv")
    assert cli.main(["report", csv, "--format", "latex", "--mechanisms", "rala_eager", "--label", "tab:r"]) == 0
    tex = capsys.readouterr().out
    assert "rala\\_eager" in tex and "softmax" not in tex
    assert r"\label{tab:r-latency-op-fwd-fp32-cpu-b1-h1-d16}" in tex and r"\label{tab:r-scaling}" in tex
    assert cli.main(["report", csv, "--format", "md", "--title", "Tiny", "--mechanisms", "rala_eager"]) == 0
    assert capsys.readouterr().out.startswith("# Tiny\n")


def test_section_api_appends_escaped_text_figures_and_tables():
    import pandas as pd

    page = html_report.HtmlReport("T")
    sec = page.add_section("History & more", text="a <b>", table=pd.DataFrame({"x": [1]}), caption="cap")
    sec.add_figure('<svg><defs><path id="m1"/></defs><use href="#m1"/></svg>', "fig")
    sec.add_figure('<svg><defs><path id="m1"/></defs><use href="#m1"/></svg>', "fig 2")
    out = page.render()
    assert (
        '<section id="history-more">' in out and "<p>a &lt;b&gt;</p>" in out and "<figcaption>cap</figcaption>" in out
    )
    assert out.count('id="history-more-f1-m1"') == 1 and 'href="#history-more-f2-m1"' in out
    assert '<a href="#history-more">History &amp; more</a>' in out


# -- in a browser ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get where missing and possible; otherwise the test is skipped."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless checks need Debian's chromium: not installed, and installing needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]  # waits for another install (.ci/run's, another worker's)
    install = [*apt, "install", "-y", "--no-install-recommends", "chromium"]
    t0 = time.monotonic()
    done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode:  # stale package lists: refresh them once
        subprocess.run([*apt, "update"], capture_output=True, text=True, timeout=600, env=env)
        done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    exe = shutil.which("chromium")
    if done.returncode or not exe:
        pytest.skip(f"chromium could not be installed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    print(f"installed chromium in {time.monotonic() - t0:.0f} s")
    return exe


def _headless(exe: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


def _root_attributes(dom: str) -> dict[str, str]:
    head = re.search(r"<html([^>]*)>", dom)
    assert head, dom[:300]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', head.group(1)))


def test_page_renders_in_chromium_without_errors(page, chromium):
    """Loaded from file:// with no network: no script error, no blocked load, no console message; every figure
    and table in the DOM; a screenshot beside the page (report.png)."""
    done = _headless(chromium, "--virtual-time-budget=3000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    root = _root_attributes(done.stdout)
    text = page.read_text(encoding="utf-8")
    assert root.get("data-ready") == "1" and root.get("data-errors") == "0", root
    assert int(root["data-figures"]) == text.count("<figure>") and int(root["data-tables"]) == text.count("<table>")
    assert "Uncaught" not in done.stderr and "CONSOLE" not in done.stderr
    assert OTHER in done.stdout and '<th scope="col">8x8</th>' in done.stdout
    shot = page.with_name("report.png")
    done = _headless(chromium, f"--screenshot={shot}", "--window-size=1280,3000", page.as_uri())
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_chromium_check_sees_errors_and_blocked_loads(page, chromium, tmp_path):
    """The same check fails a page with a script error and an outside image (which the page's policy blocks)."""
    broken = tmp_path / "broken.html"
    bad = '<img src="https://example.invalid/x.png"><script>notDefined();</script></body>'
    broken.write_text(page.read_text(encoding="utf-8").replace("</body>", bad), encoding="utf-8")
    done = _headless(chromium, "--virtual-time-budget=3000", "--dump-dom", broken.as_uri())
    root = _root_attributes(done.stdout)
    assert int(root.get("data-errors", 0)) >= 2, root  # the blocked image may also count as a failed load
    assert "notDefined" in root["data-error-text"] and "blocked: https://example.invalid" in root["data-error-text"]
