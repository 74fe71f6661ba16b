"""The report's figures: latency, peak memory and speed-up against tokens, one figure per group, drawn for a
paper by default (matplotlib's object API: no pyplot, no global backend; matplotlib imported only here).

Conventions (the same in every figure of every report):
- Colours: a fixed palette keyed by mechanism name. A family has one hue (a sequential colour map: softmax
  blues, rala reds, linear greens; any other family a spare map chosen by its name) and each member a shade
  of it and a marker of its own, both from the member's place in FAMILY_MEMBERS (the built-in mechanisms),
  else from a hash of its name.
- Axes: log-log, tokens N = H x W against the metric in its unit (ms, MiB, x); titles in words
  (`labels.words_title`).
- Error bars: the p20-p80 spread of the case's round values (of its repeats where the run has one round);
  a speed-up's bars are its interval (bootstrap CI, or the combined p20-p80 bands: `analysis.speedup`).
  Points of contended cases are hollow.
- The legend sits outside the axes, right of them, so it never covers data.
- At most MAX_SERIES mechanisms per figure: a group with more is split by family (small families share a
  figure, one larger than MAX_SERIES is cut into parts).
- Facets: where the rows carry the FACET column (the hardware a run was measured on) with several values,
  one panel per value, side by side, sharing the y axis.
PDF output is vector with TrueType fonts embedded; SVG (`svg`) keeps text as text, for inline HTML.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench import analysis, stats
from attnbench.analysis import CURVE_KEYS
from attnbench.errors import AttnbenchError
from attnbench.labels import group_slug, text, words_title

FACET = "hardware"  # a row column that, with several values, splits a figure into panels
MAX_SERIES = 8
FAMILY_MEMBERS = {  # the built-in mechanisms (registry.names(family)): a member's shade and marker
    "local": ("neighborhood", "neighborhood_eager", "window", "window_flex"),
    "linear": (
        "agent",
        "cosformer",
        "efficient_attention",
        "flatten",
        "hydra",
        "inline",
        "linear_elu",
        "linear_relu",
        "mlla",
        "nystromformer",
        "performer",
        "polaformer",
    ),
    "rala": ("rala_compiled", "rala_eager", "rala_no_gate", "rala_no_qaware", "rala_no_rope", "rala_triton"),
    "softmax": (
        "softmax_eager",
        "softmax_flash",
        "softmax_flex",
        "softmax_sdpa",
        "softmax_sdpa_cudnn",
        "softmax_sdpa_efficient",
        "softmax_sdpa_flash",
        "softmax_sdpa_math",
        "softmax_xformers",
    ),
}
# a family's colour map: a matplotlib name, or (light, dark) ends of a one-hue map (violet, between red and blue)
FAMILY_MAPS = {"softmax": "Blues", "rala": "Reds", "linear": "Greens", "local": ("#e9d0f5", "#5f1980")}
SPARE_MAPS = ("Purples", "Oranges", "Greys", "PuRd", "YlOrBr", "BuGn")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">", "p", "*")
HOLLOW_LABEL = "hollow: contended (re-run quietly)"


class FigureError(AttnbenchError):
    """A figure that cannot be drawn (matplotlib missing)."""


# -- palette -------------------------------------------------------------------------------------------
def style(mechanism: str, family: str = "") -> dict[str, Any]:
    """matplotlib keywords (color, marker, ls) of `mechanism`: its family's hue, its own shade and marker."""
    from matplotlib import colormaps, colors

    family = text(family)
    cmap = FAMILY_MAPS.get(family) or SPARE_MAPS[zlib.crc32(family.encode()) % len(SPARE_MAPS)]
    cmap = colors.LinearSegmentedColormap.from_list(family, cmap) if isinstance(cmap, tuple) else colormaps[cmap]
    members = FAMILY_MEMBERS.get(family, ())
    if mechanism in members:  # a built-in: its place in the family spreads the shades (neighbours far apart)
        n, slot = len(members), members.index(mechanism)
        stride = next(s for s in (5, 7, 3, 1) if math.gcd(s, n) == 1)
        shade, marker = ((slot * stride) % n) / max(n - 1, 1), MARKERS[slot % len(MARKERS)]
    else:  # any other name: shade and marker from a hash of it
        h = zlib.crc32(mechanism.encode())
        shade, marker = (h % 1009) / 1008, MARKERS[(h // 1009) % len(MARKERS)]
    shade = 0.4 + 0.55 * shade
    return {"color": colors.to_hex(cmap(shade)), "marker": marker, "ls": "-"}


def series_sets(mechanisms: Sequence[tuple[str, str]], limit: int = MAX_SERIES) -> list[tuple[str, list[str]]]:
    """(what, names) of each figure for (mechanism, family) pairs: one set when at most `limit`, else by family
    (families in name order packed together while they fit; one larger than `limit` in near-equal parts)."""
    names = list(dict.fromkeys(m for m, _ in mechanisms))
    if len(names) <= limit:
        return [("", names)]
    by_family: dict[str, list[str]] = {}
    for mech, fam in sorted(dict(mechanisms).items(), key=lambda mf: (text(mf[1]), mf[0])):
        by_family.setdefault(text(fam) or "other", []).append(mech)
    sets: list[tuple[str, list[str]]] = []
    held: tuple[list[str], list[str]] = ([], [])
    for fam, members in by_family.items():
        if len(held[1]) + len(members) > limit and held[1]:
            sets.append((" and ".join(held[0]), held[1]))
            held = ([], [])
        if len(members) > limit:
            parts = math.ceil(len(members) / limit)
            size = math.ceil(len(members) / parts)
            sets += [(f"{fam}, part {i + 1} of {parts}", members[i * size : (i + 1) * size]) for i in range(parts)]
        else:
            held = ([*held[0], fam], [*held[1], *members])
    if held[1]:
        sets.append((" and ".join(held[0]), held[1]))
    return sets


# -- figures -------------------------------------------------------------------------------------------
@dataclass
class Plot:
    """One drawn figure: `stem` names its files, `title` says what it shows in words."""

    stem: str
    title: str
    figure: Any  # matplotlib.figure.Figure
    group: dict
    metric: str


def _slug(txt: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", txt).strip("_")


def _part_slug(part: str) -> str:
    """'linear, part 1 of 2' -> 'linear-1of2'; 'rala and softmax' -> 'rala-softmax'."""
    return _slug(re.sub(r", part (\d+) of (\d+)", r"-\1of\2", part).replace(" and ", "-"))


def _figure(panels: int):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FigureError("plots need matplotlib: pip install 'attnbench[plot]'") from None
    fig = Figure(figsize=(3.6 * panels + 2.8, 4.0), layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def _facets(df: pd.DataFrame, facet: str | None) -> list[str]:
    if not facet or facet not in df.columns:
        return [""]
    values = [text(v) for v in dict.fromkeys(df[facet])]
    return values if len(values) > 1 else [""]


def _per_facet(df: pd.DataFrame, facet: str | None, fn, samples=None) -> pd.DataFrame:
    """fn(rows, samples) for each facet value (samples: one frame, or a mapping facet value -> frame), concatenated
    with the value in `_facet` (each facet computed on its own: two machines' cases may share case_ids)."""
    parts = []
    for value in _facets(df, facet):
        rows = df[df[facet].map(text) == value] if value else df
        side = samples.get(value) if isinstance(samples, Mapping) else samples
        parts.append(fn(rows, side).assign(_facet=value))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _families(df: pd.DataFrame) -> dict[str, str]:
    if "family" not in df.columns:
        return {}
    return {m: text(f) for m, f in zip(df["mechanism"], df["family"])}


def _error_bars(y: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(2, n) distances below and above y for ax.errorbar; 0 where an end is missing."""
    err = np.vstack([y - low, high - y])
    return np.where(np.isfinite(err), np.clip(err, 0, None), 0)


def _curves(
    frame: pd.DataFrame,
    families: dict[str, str],
    *,
    metric: str,
    what: str,
    ylabel: str,
    stem: str,
    columns: tuple[str, str, str],
    fit_from: float | None = None,
    reference: float | None = None,
) -> Iterator[Plot]:
    """One Plot per group (and family set) of `frame`: y = columns[0] with bars columns[1:] against tokens."""
    ycol, lowcol, highcol = columns
    for key, g in frame.groupby(list(CURVE_KEYS), sort=False, dropna=False):
        if g["tokens"].nunique() < 2:
            continue
        group = dict(zip(CURVE_KEYS, key))
        facets = list(dict.fromkeys(g["_facet"]))
        mechs = [(m, families.get(m, "")) for m in dict.fromkeys(g["mechanism"])]
        for part, members in series_sets(mechs):
            fig, axes = _figure(len(facets))
            for ax, value in zip(axes, facets):
                sub = g[g["_facet"] == value]
                if reference is not None:
                    ax.axhline(reference, color="0.6", lw=0.8)
                for mech in members:
                    m = sub[sub["mechanism"] == mech].sort_values("tokens")
                    if not m.empty:
                        _curve(ax, m, mech, style(mech, families.get(mech, "")), columns, fit_from, len(facets) == 1)
                _axes(ax, ylabel, value)
            _legend(fig, axes)
            title = words_title(what, group) + (f" ({part})" if part else "")
            fig.suptitle("\n".join(textwrap.wrap(title, 40 + 45 * len(facets))), fontsize=9)
            yield Plot(
                f"{stem}-{group_slug(group)}" + (f"-{_part_slug(part)}" if part else ""), title, fig, group, metric
            )


def _curve(ax, m: pd.DataFrame, mech: str, st: dict, columns, fit_from: float | None, exponent: bool) -> None:
    n = m["tokens"].to_numpy(float)
    y, low, high = (m[c].to_numpy(float) for c in columns)
    label, fit = mech, None
    if fit_from is not None:
        keep = n >= fit_from
        fit = stats.fit_power_law(n[keep], y[keep]) if np.unique(n[keep]).size >= 2 else None
        if fit and exponent:
            label += rf" ($\propto N^{{{fit.exponent:.2f}}}$)"
    ax.errorbar(n, y, yerr=_error_bars(y, low, high), ms=4, capsize=2, lw=1.2, label=label, **st)
    if fit:
        xs = np.geomspace(n[n >= fit_from].min(), n[n >= fit_from].max(), 50)
        ax.plot(xs, fit.prefactor * xs**fit.exponent, "--", lw=0.8, alpha=0.6, color=st["color"])
    flagged = m["contended"].to_numpy(bool)
    if flagged.any():
        ax.plot(n[flagged], y[flagged], ls="none", marker=st["marker"], ms=4, mfc="white", mec=st["color"], zorder=3)
        ax.plot([], [], ls="none", marker="o", ms=4, mfc="white", mec="0.3", label=HOLLOW_LABEL)


def _axes(ax, ylabel: str, panel: str) -> None:
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_yscale("log")

    class PlainLog(ticker.LogFormatter):  # the default labels (10^k) are mathtext, whose parsing is most of a
        def _num_to_string(self, x, vmin, vmax):  # figure's drawing time; plain numbers ("0.6", "3000") are not
            return f"{x:g}"

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(PlainLog())
        axis.set_minor_formatter(PlainLog(labelOnlyBase=False))
    ax.set_xlabel("tokens N = H×W")
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel(ylabel)
    if panel:
        ax.set_title(panel, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)


def _legend(fig, axes) -> None:
    """One legend for all panels, outside the axes, right of the last one (constrained layout makes room)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        axes[-1].legend(
            list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False
        )


def vs_tokens(
    df: pd.DataFrame, metric: str = "latency", *, min_tokens: int | None = None, facet: str | None = FACET
) -> list[Plot]:
    """Per group, `metric` against tokens, one curve per mechanism with p20-p80 bars and a dashed power-law
    fit (over tokens >= min_tokens; its exponent in the legend when the figure has one panel)."""
    frame = _per_facet(df, facet, lambda rows, _: analysis.metric_frame(rows, metric))
    if frame.empty:
        return []
    scale, unit = analysis.display_scale(metric, str(frame["unit"].iloc[0]))
    frame[["center", "p20", "p80"]] = frame[["center", "p20", "p80"]].astype(float) / scale
    what = {"latency": "latency per call", "peak_memory": "peak memory"}.get(metric, metric.replace("_", " "))
    return list(
        _curves(
            frame,
            _families(df),
            metric=metric,
            what=what,
            ylabel=f"{what} ({unit})",
            stem=metric,
            columns=("center", "p20", "p80"),
            fit_from=float(min_tokens or 0),
        )
    )


def speedups(df: pd.DataFrame, baseline: str, *, samples=None, facet: str | None = FACET) -> list[Plot]:
    """Per group, speed-up over `baseline` (baseline latency / mechanism latency, > 1: faster) against tokens,
    with its interval; `samples` is one frame, or a mapping facet value -> frame."""
    frame = _per_facet(df, facet, lambda rows, s: analysis.speedup(rows, baseline, samples=s), samples)
    frame = frame[frame["mechanism"] != baseline]
    return list(
        _curves(
            frame,
            _families(df),
            metric="speedup",
            what=f"speed-up over {baseline}",
            ylabel=f"speed-up over {baseline} (×, >1 faster)",
            stem=f"speedup-vs-{_slug(baseline)}",
            columns=("speedup", "low", "high"),
            reference=1.0,
        )
    )


def report_plots(
    df: pd.DataFrame,
    *,
    baseline: str | None = None,
    samples=None,
    min_tokens: int | None = None,
    facet: str | None = FACET,
) -> list[Plot]:
    """Latency and peak memory against tokens, and speed-up over `baseline` when given."""
    plots = vs_tokens(df, "latency", min_tokens=min_tokens, facet=facet)
    plots += vs_tokens(df, "peak_memory", min_tokens=min_tokens, facet=facet)
    if baseline:
        plots += speedups(df, baseline, samples=samples, facet=facet)
    return plots


# -- output --------------------------------------------------------------------------------------------
def save(plot: Plot, out_dir: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `plot` as <stem>.<fmt> for each format (PDF and SVG vector, fonts embedded as TrueType)."""
    from matplotlib import rc_context

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{plot.stem}.{fmt}" for fmt in formats]
    with rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}):
        for p in paths:
            plot.figure.savefig(p, dpi=150)
    return paths


def svg(plot: Plot) -> str:
    """`plot` as an <svg> element for inline HTML: text kept as text, no XML prolog, DOCTYPE, metadata or
    namespace URLs (the HTML parser puts <svg> in its namespace)."""
    from matplotlib import rc_context

    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "attnbench"}):
        plot.figure.savefig(buf, format="svg", metadata={"Date": None})
    out = buf.getvalue()
    out = out[out.index("<svg") :]
    out = re.sub(r"<metadata>.*?</metadata>\s*", "", out, flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", out)
