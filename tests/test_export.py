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
    assert lines[0].startswith("**Median forward latency per call (ms) of the attention operator") and lines[1] == ""
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
    assert r"\label" not in default
    assert (  # the caption says in words what the table shows
        r"\caption{Median forward latency per call (ms) of the attention operator, fp32 on CPU, batch 1, 1 head of "
        r"64 channels, by mechanism and token grid HxW; $\pm$: the larger distance to p20 or p80 of the round values"
    ) in default


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
        if p.suffix == ".pdf":  # vector: no raster image inside, fonts embedded as TrueType
            body = p.read_bytes()
            assert b"/Subtype /Image" not in body and b"/FontFile2" in body


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


# -- figures: palette, splitting, legend, facets ---------------------------------------------------------------
def _hue(colour: str) -> float:
    import colorsys

    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hsv(r, g, b)[0]


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_palette_is_fixed_by_name_and_families_share_a_hue():
    pytest.importorskip("matplotlib")
    from attnbench import figures, registry

    builtin = {  # the mechanisms the project ships (tests may have registered plugins of their own beside them)
        f: tuple(n for n in registry.names(f) if type(registry.get(n)).__module__.startswith("mechanisms."))
        for f in registry.families()
    }
    assert figures.FAMILY_MEMBERS == {f: names for f, names in builtin.items() if names}  # each has its place
    styles = {(f, m): figures.style(m, f) for f, ms in figures.FAMILY_MEMBERS.items() for m in ms}
    looks = [(s["color"], s["marker"]) for s in styles.values()]
    assert len(set(looks)) == len(looks)  # no two built-ins look alike
    hues = {f: [_hue(s["color"]) for (fam, _), s in styles.items() if fam == f] for f in figures.FAMILY_MEMBERS}
    for f, hs in hues.items():
        assert max(_hue_gap(a, b) for a in hs for b in hs) < 0.1, f  # one hue per family
    centre = {f: hs[0] for f, hs in hues.items()}
    assert min(_hue_gap(centre[a], centre[b]) for a in centre for b in centre if a < b) > 0.2
    assert figures.style("mlla", "linear")["color"] != figures.style("softmax_sdpa", "softmax")["color"]
    assert figures.style("my_plugin", "mine") == figures.style("my_plugin", "mine")  # unknown: fixed by name


def test_series_sets_split_by_family_at_most_eight():
    from attnbench import figures

    mechs = [(f"lin{i:02d}", "linear") for i in range(12)] + [("r1", "rala"), ("r2", "rala"), ("s1", "softmax")]
    sets = figures.series_sets(mechs)
    assert [what for what, _ in sets] == ["linear, part 1 of 2", "linear, part 2 of 2", "rala and softmax"]
    assert all(len(names) <= 8 for _, names in sets)
    assert sorted(n for _, names in sets for n in names) == sorted(m for m, _ in mechs)
    assert figures.series_sets(mechs[:8]) == [("", [m for m, _ in mechs[:8]])]


def _figure_run(tmp_path, mechanisms: dict[str, str], hardware: str = "") -> pd.DataFrame:
    rows = []
    for i, (mech, fam) in enumerate(mechanisms.items()):
        for side in (7, 14, 28):
            rows += [dict(r, family=fam) for r in case_rows(mech, side, (1 + i) * 0.01 * side**2)]
    path = tmp_path / f"fig{hardware}.csv"
    writer = results.ResultsWriter(path)
    writer.write_rows(rows)
    writer.close()
    df = results.load(path)
    return df.assign(hardware=hardware) if hardware else df


def test_figures_split_words_titles_legend_outside_and_one_colour_per_mechanism(tmp_path):
    pytest.importorskip("matplotlib")
    from attnbench import figures

    mechs = {**{f"lin{i}": "linear" for i in range(7)}, "rala_eager": "rala", "softmax_sdpa": "softmax"}
    df = _figure_run(tmp_path, mechs)
    plots = figures.report_plots(df, baseline="softmax_sdpa")
    assert [p.stem for p in plots] == [  # 9 mechanisms: by family; 8 speed-ups (no baseline): one figure
        "latency-op-fwd-fp32-cpu-b1-h1-d64-linear-rala",
        "latency-op-fwd-fp32-cpu-b1-h1-d64-softmax",
        "speedup-vs-softmax_sdpa-op-fwd-fp32-cpu-b1-h1-d64",
    ]  # no memory rows: no memory figure
    assert plots[0].title == (
        "Forward latency per call of the attention operator, fp32 on CPU, batch 1, 1 head of 64 channels "
        "(linear and rala)"
    )
    colours: dict[str, set] = {}
    for plot in plots:
        fig = plot.figure
        fig.canvas.draw()
        (ax,) = fig.axes
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert "(ms)" in ax.get_ylabel() or "(×" in ax.get_ylabel()
        legend = ax.get_legend()
        box, frame = legend.get_window_extent(), ax.get_window_extent()
        assert box.x0 >= frame.x1  # right of the axes: covers no data
        for bars in ax.containers:  # an errorbar per mechanism: its label and its line's colour
            colours.setdefault(bars.get_label().split(" (")[0], set()).add(bars.lines[0].get_color())
    assert sorted(colours) == sorted(mechs) and all(len(c) == 1 for c in colours.values())
    assert len({figures.style(m, f)["color"] for m, f in mechs.items()}) == len(mechs)


def test_figures_facet_by_hardware(tmp_path):
    pytest.importorskip("matplotlib")
    from attnbench import figures

    mechs = {"rala_eager": "rala", "softmax_sdpa": "softmax"}
    df = pd.concat([_figure_run(tmp_path, mechs, "H100"), _figure_run(tmp_path, mechs, "A100")], ignore_index=True)
    (plot,) = figures.vs_tokens(df, "latency")
    assert [ax.get_title() for ax in plot.figure.axes] == ["H100", "A100"]
    assert [sorted(c.get_label() for c in ax.containers) for ax in plot.figure.axes] == [sorted(mechs)] * 2
    svg = figures.svg(plot)
    assert svg.startswith("<svg") and "H100" in svg and "http" not in svg
