"""Workloads: what a case runs, built once and outside the timed region.

inputs.py       `CaseInputs`: a case resolved once (mechanism, shape, dtype, device, pass, options) with the
                seeded factory of its tensors and modules; timing, verification and rank all draw from it
closure.py      `Workload`: the zero-argument closure that is timed, its items/tokens and static rows
build.py        op- and mixer-level workloads; `build_workload(inputs)` for any level
model.py        model level: a whole RAVLT timed as inference or as a training step
rank_inputs.py  what the rank metrics measure: a case's KV buffer and operator output
"""
