"""tables and export: report tables, Markdown/booktabs LaTeX structure and escaping, tidy CSV, plots on disk."""

from __future__ import annotations

import io
import re

import pandas as pd
import pytest

from attnbench import analysis, export, results, tables
from attnbench.tables import Table


def case_rows(
    mech: str, h: int, median: float | None, *, pass_: str = "fwd", status: str = "ok", memory: float | None = None
) -> list[dict]:
    base = dict(
        schema_version=1,
        run_id="r",
        suite="synthetic",
        mechanism=mech,
        family="f",
        backend="torch",
        level="op",
        variant="",
        device="cpu",
        dtype="fp32",
        batch=1,
        height=h,
        width=h,
        tokens=h * h,
        heads=1,
        head_dim=64,
        dim=64,
        source="measured",
        note="",
        env_id="e1",
        message="",
        started_at="2025-01-01T00:00:00",
        status=status,
        unit="ms",
        metric="latency",
        case_id=f"{mech}-{pass_}-{h}",
    )
    base["pass"] = pass_
    if status != "ok":
        return [dict(base, value=None, stat="value", message=status)]
    rows = [
        dict(base, value=median, stat=s)
        for s, median in (("median", median), ("p20", median * 0.9), ("p80", median * 1.1))
    ]
    if memory is not None:
        rows.append(dict(base, metric="peak_memory", value=memory, stat="value", unit="B"))
    return rows


@pytest.fixture
def run(tmp_path) -> pd.DataFrame:
    rows = []
    for side in (7, 14, 28, 56):
        n = side * side
        rows += case_rows("rala_eager", side, 0.02 * n, memory=512.0 * n)
        rows += case_rows("softmax_sdpa", side, 1e-4 * n * n, memory=8.0 * n * n)
    rows += case_rows("softmax_eager", 7, 0.1) + case_rows("softmax_eager", 14, None, status="oom")
    writer = results.ResultsWriter(tmp_path / "run.csv")
    writer.write_rows(rows)
    writer.close()
    return results.load(tmp_path / "run.csv")


def test_markdown_structure_and_escaping(run):
    (lat,) = analysis.pivot_tables(run, "latency")
    md = export.to_markdown(lat)
    lines = md.splitlines()
    assert lines[0].startswith("**latency ms") and lines[1] == ""
    assert lines[2] == "| mechanism | 7x7 | 14x14 | 28x28 | 56x56 |"
    assert lines[3] == "|:--|--:|--:|--:|--:|"
    body = [line for line in lines[4:] if line.startswith("| ")]
    # rows by family, then name
    assert [line.split(" | ")[0] for line in body] == ["| rala_eager", "| softmax_eager", "| softmax_sdpa"]
    assert all(line.count("|") == 6 for line in body)
    assert "| softmax_eager | 0.1 ±10% | oom | - | - |" in md  # p80 = 1.1 x median; status; no case
    piped = export.to_markdown(Table("a|b", pd.DataFrame({"x": ["1|2"]}, index=pd.Index(["m"], name="who"))))
    assert "| m | 1\\|2 |" in piped and "| who | x |" in piped


def test_latex_booktabs_structure_and_escaping(run):
    (lat,) = analysis.pivot_tables(run, "latency")
    tex = export.to_latex(lat, caption="Latency of op_level 50% cases", label="tab:lat")
    lines = tex.splitlines()
    assert lines[0] == r"\begin{table}[t]" and lines[-1] == r"\end{table}"
    assert r"\caption{Latency of op\_level 50\% cases}" in lines and r"\label{tab:lat}" in lines
    assert r"\begin{tabular}{lrrrr}" in lines
    top, mid, bottom = (lines.index(x) for x in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert top + 2 == mid and mid + 4 == bottom  # one header row, three mechanism rows
    assert lines[top + 1] == r"mechanism & 7x7 & 14x14 & 28x28 & 56x56 \\"
    assert lines[mid + 1].startswith(r"rala\_eager & ") and lines[mid + 1].endswith(r"\\")
    assert r"$\pm$10\%" in lines[mid + 1]
    assert not re.search(r"(?<!\\)[_%#]", "\n".join(lines[mid + 1 : bottom]))  # every special escaped
    assert export.latex_escape("a_b & {c} ~ 100% $x^2$ #1 \\") == (
        r"a\_b \& \{c\} \textasciitilde{} 100\% \$x\textasciicircum{}2\$ \#1 \textbackslash{}"
    )
    default = export.to_latex(lat)
    assert r"\caption{latency ms (median) --- op fwd fp32 cpu" in default and r"\label" not in default


def test_tidy_csv_has_the_numbers(run):
    pivots = analysis.pivot_tables(run, "latency")
    tidy = export.tidy([*pivots, Table("strings are skipped", pd.DataFrame())])
    assert len(tidy) == 3 * 4
    rala = tidy[(tidy["mechanism"] == "rala_eager") & (tidy["column"] == "28x28")].iloc[0]
    assert rala["value"] == pytest.approx(0.02 * 784) and rala["low"] == pytest.approx(0.9 * 0.02 * 784)
    assert rala["metric"] == "latency" and rala["unit"] == "ms" and rala["batch"] == 1
    oom = tidy[(tidy["mechanism"] == "softmax_eager") & (tidy["column"] == "14x14")].iloc[0]
    assert pd.isna(oom["value"]) and oom["status"] == "oom"
    back = pd.read_csv(io.StringIO(export.to_csv(pivots)))
    assert back["value"].sum() == pytest.approx(tidy["value"].sum())


def test_report_tables_sections(run):
    made = tables.report_tables(run, baseline="softmax_sdpa", crossover=("softmax_sdpa", "rala_eager"))
    titles = [tables.as_table(t).title for t in made]
    assert [t.split(" ")[0] for t in titles] == ["latency", "peak_memory", "speedup", "crossover", "scaling"]
    cross = tables.as_table(made[3]).frame
    assert cross.iloc[0]["crossover"].startswith("N* = 200")  # 1e-4 N^2 = 0.02 N at N = 200
    for t in made:
        assert export.to_markdown(t).count("\n|") >= 2 and r"\bottomrule" in export.to_latex(t)


def test_plots_written(run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    paths = export.write_plots(run, out, baseline="softmax_sdpa")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in (
            "latency-op-fwd-fp32-cpu-b1-h1-d64",
            "peak_memory-op-fwd-fp32-cpu-b1-h1-d64",
            "speedup-vs-softmax_sdpa-op-fwd-fp32-cpu-b1-h1-d64",
        )
        for ext in ("png", "pdf")
    )
    for p in paths:
        head = p.read_bytes()[:8]
        assert p.stat().st_size > 1000 and head.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF")


def test_fmt_number_significant_digits():
    got = [tables.fmt_number(v) for v in (0.0001234, 0.0123, 1.234, 123.4, 1234.5, 2.4e9, float("nan"))]
    assert got == ["0.000123", "0.0123", "1.23", "123", "1234", "2.40e+09", ""]


def test_every_table_format_labels_columns_alike(run):
    """The terminal summary, the pivots (Markdown, LaTeX, CSV) and the speedups name a token grid 'HxW'."""
    from attnbench import summary

    want = ["7x7", "14x14", "28x28", "56x56"]
    term = summary.summary_tables(run)[0].frame
    (lat,) = analysis.pivot_tables(run, "latency")
    (sp,) = analysis.speedup_tables(run, "softmax_sdpa")
    assert list(term.columns) == list(lat.values.columns) == list(sp.values.columns) == want
    assert set(export.tidy([lat])["column"]) == set(want)
    assert "& 7x7 &" in export.to_latex(lat) and "| 7x7 |" in export.to_markdown(lat)
