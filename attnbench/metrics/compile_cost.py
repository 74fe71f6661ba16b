"""compile_s and recompiles: what torch.compile costs a timed case, written with its latency rows.

A case is compiled when its mechanism declares `compiled = True` (rala_compiled; a plugin that runs
torch.compile), when its late mixer does (level model, `mixer_late`), or with the suite key `compile: model`
(the whole backbone). Each visit of such a case (attnbench.metrics.latency):

  compile_s   s      the visit's first call, timed before the warm-up after `torch._dynamo.reset()`: tracing,
                     code generation (or loading it from inductor's on-disk cache: the note says which,
                     attnbench.measure.compiler.FirstCall) and the call itself
  recompiles  count  graphs dynamo compiled during the timed repeats; 0 when the compiled code is steady

The rows are the visit that writes the case's rows (the last sweep of the last round); every visit's values
are in FILE.samples.csv (metrics `compile_s`, `recompiles`). A recompile inside the timed region puts compile
time into the latency: the latency rows' note then says `recompiled` and a RuntimeWarning names the case.
"""

from __future__ import annotations

import warnings

from attnbench import registry
from attnbench.measure.compiler import FirstCall, first_call, graphs_compiled
from attnbench.metrics.row import MetricRow
from attnbench.plan import Case

RECOMPILED = "recompiled"


def compiled_parts(case: Case) -> list[str]:
    """What runs through torch.compile in `case`: compiled mechanisms by name, and "model" (`compile: model`)."""
    parts = []
    mech = registry.get(case.mechanism)
    if getattr(mech, "compiled", False):
        parts.append(mech.name)
    if case.level == "model":
        options = case.options_dict
        late = options.get("mixer_late")
        if late and late != mech.name and getattr(registry.get(late), "compiled", False):
            parts.append(late)
        if options.get("compile", "none") != "none":
            parts.append("model")
    return parts


def is_compiled(case: Case) -> bool:
    return bool(compiled_parts(case))


def graph_counter(case: Case):
    """`graphs_compiled` for a compiled case (read around its timed repeats), else None."""
    return graphs_compiled if is_compiled(case) else None


def first_visit_call(fn, case: Case) -> FirstCall | None:
    """The timed first call of a compiled case's workload (`fn`), else None (nothing is called)."""
    return first_call(fn, case.device) if is_compiled(case) else None


def visit_samples(first: FirstCall | None, recompiles: int | None) -> dict[str, list[float]]:
    """A visit's compile samples for FILE.samples.csv."""
    samples: dict[str, list[float]] = {}
    if first is not None:
        samples["compile_s"] = [first.seconds]
    if recompiles is not None:
        samples["recompiles"] = [float(recompiles)]
    return samples


def rows(case: Case, first: FirstCall | None, samples: dict[str, list[float]]) -> list[MetricRow]:
    """The compile_s and recompiles rows of the visit that writes the case's rows ([] when not compiled)."""
    if first is None:
        return []
    what = " + ".join(compiled_parts(case))
    out = [MetricRow("compile_s", first.seconds, "s", note=f"{what}; {first.note()}")]
    recompiles = samples.get("recompiles")
    if recompiles:
        count = int(recompiles[-1])
        out.append(MetricRow("recompiles", float(count), "count", note="graphs compiled during the timed repeats"))
    return out


def latency_note(case: Case, samples: dict[str, list[float]], note: str) -> str:
    """The latency rows' `note` with 'recompiled: N graphs compiled during the timed repeats' added (and a
    RuntimeWarning naming the case) when the visit's timed repeats compiled a graph; else `note` unchanged."""
    count = int(sum(samples.get("recompiles", ())))
    if not count:
        return note
    mark = f"{RECOMPILED}: {count} graph{'s' if count != 1 else ''} compiled during the timed repeats"
    warnings.warn(
        f"{case.label()}: {mark}, so its latency includes compile time (does a guard fail on every call?)",
        RuntimeWarning,
        stacklevel=2,
    )
    return f"{note}; {mark}" if note else mark
