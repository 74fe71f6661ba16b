"""Verified outputs: each case's output (and gradients for fwd_bwd and bwd) against the registered reference.

Rule (FlashAttention's tests use it too; docs/design.md, "Verification"): on the same inputs, the
candidate's relative RMS error against the reference mechanism run in float64 may be at most
    2 * (the reference mechanism's own error in the case dtype) + 16 * eps(dtype)
where the eps term is a floor for cases where the reference is (nearly) exact. A mechanism with
no registered reference is checked against itself in float64 (catches dtype-dependent bugs:
overflow, bad accumulation). The case's options configure the candidate, and the reference too where the
mechanism's `reference_options` names them (a local pattern's window or kernel). Large cases are verified at a
reduced shape (batch 1, grid capped at 32 x 32, or the case's grid where the mechanism's `case_reason` refuses
the capped one) - the note says so. Model-level cases are not verified here (their mixers are, at mixer level;
the model is checked against the published outputs in the test suite).

After timing (`snapshot`, `recheck`), the timed call's output is checked again: one call of the timed closure
after the timed repeats against the output of one call made right after verification, by the verdict's
tolerance (a cheap check: no float64 reference runs again). It catches a mechanism whose output drifts over
the repeats (state that accumulates, inputs changed in place, a cache gone stale).

Inputs come from the case's own factory (attnbench.workloads.inputs) with seed VERIFY_SEED: q, k, v (B, h, N, d)
and the mixer's init by the factory's rule; the mixer's x and the fixed output gradients g from the offsets below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench import registry
from attnbench.dtypes import TABLE
from attnbench.workloads.inputs import CaseInputs

MAX_TOKENS = 32 * 32
MAX_BATCH_HEADS_TOKENS = 1 << 18
VERIFY_SEED = 123
OP_GRAD_SEED, MIXER_X_SEED, MIXER_GRAD_SEED = 9, 20, 21  # offsets from VERIFY_SEED


@dataclass(frozen=True)
class Verdict:
    rel_err: float  # candidate (case dtype) vs reference (float64)
    grad_rel_err: float | None  # gradients, fwd_bwd and bwd only
    tolerance: float
    reference: str
    note: str

    @property
    def ok(self) -> bool:
        errs = [self.rel_err] + ([self.grad_rel_err] if self.grad_rel_err is not None else [])
        return all(e == e and e <= self.tolerance for e in errs)  # NaN fails

    def message(self) -> str:
        grad = f", grads {self.grad_rel_err:.3g}" if self.grad_rel_err is not None else ""
        return (
            f"verify failed: rel_err {self.rel_err:.3g}{grad} vs {self.reference} exceeds tolerance "
            f"{self.tolerance:.3g}"
        )


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    denom = ref.norm().item()
    diff = (x.double() - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors if t is not None])


def _reduced(inputs: CaseInputs) -> tuple[CaseInputs, str]:
    """The case at seed VERIFY_SEED, reduced to batch 1 and a grid of at most 32 x 32 when large."""
    s = inputs.shape
    if s.height * s.width <= MAX_TOKENS and s.batch * s.heads * s.height * s.width <= MAX_BATCH_HEADS_TOKENS:
        return inputs.at(seed=VERIFY_SEED), ""
    b, h, w = 1, min(s.height, 32), min(s.width, 32)
    if inputs.level == "op" and inputs.mech.case_reason(
        level=inputs.level, pass_=inputs.pass_, device=inputs.device, grid=(h, w), options=dict(inputs.options)
    ):  # a grid the mechanism cannot take at 32 x 32 (a wide dilated neighbourhood): its own grid, batch 1
        h, w = s.height, s.width
    return inputs.at(batch=b, height=h, width=w, seed=VERIFY_SEED), f"verified at reduced shape B{b} {h}x{w}"


def _run_op(mech, q, k, v, grid, g, options=None):
    q, k, v = (t.detach().clone().requires_grad_(g is not None) for t in (q, k, v))
    options = options or {}
    if g is None:
        with torch.no_grad():
            return mech.op(q, k, v, grid=grid, **options), None
    out = mech.op(q, k, v, grid=grid, **options)
    grads = torch.autograd.grad(out, [q, k, v], g.to(out.dtype))
    return out.detach(), grads


def _reference_options(mech, ref_fn, options) -> dict:
    """The case's options that also configure the reference (`mech.reference_options`: the options that define
    the function computed, e.g. a local pattern's window), those `ref_fn` takes."""
    return registry.accepted_options(ref_fn, mech.reference_options(dict(options)))


def verify_case(inputs: CaseInputs) -> Verdict | None:
    """The verdict of an op- or mixer-level case (None at model level)."""
    if inputs.level == "op":
        return verify_op(inputs)
    if inputs.level == "mixer":
        return verify_mixer(inputs)
    return None


def verify_op(inputs: CaseInputs) -> Verdict:
    """Options configure the candidate, and the reference when it is the candidate itself or where the candidate's
    `reference_options` names them."""
    mech = inputs.mech
    ref_mech = registry.get(mech.reference) if mech.reference else mech
    small, note = _reduced(inputs)
    qkv = small.qkv()  # (B, h, N, d) each, in the case dtype
    s = small.shape
    g = (
        small.randn((s.batch, s.heads, s.height * s.width, s.head_dim), OP_GRAD_SEED, dtype=torch.float64)
        if small.pass_ in registry.BACKWARD_PASSES
        else None
    )
    options = small.op_options()
    ref_opts = options if ref_mech is mech else _reference_options(mech, ref_mech.op, small.options)
    out, grads = _run_op(mech, *qkv, small.grid, g, options)
    ref64, ref_grads64 = _run_op(ref_mech, *(t.double() for t in qkv), small.grid, g, ref_opts)
    ref_lo, ref_grads_lo = _run_op(ref_mech, *qkv, small.grid, g, ref_opts) if ref_mech is not mech else (out, grads)
    return _verdict(out, grads, ref64, ref_grads64, ref_lo, ref_grads_lo, small.dtype, ref_mech, mech, note)


def verify_mixer(inputs: CaseInputs) -> Verdict:
    mech = inputs.mech
    ref_mech = registry.get(mech.reference) if mech.reference else mech
    small, note = _reduced(inputs)
    cand = small.mixer()
    ref = (
        ref_mech.mixer(small.shape.dim, small.shape.heads, **_reference_options(mech, ref_mech.mixer, small.options))
        if ref_mech is not mech
        else None
    )
    if ref is not None:
        missing, unexpected = ref.load_state_dict(cand.state_dict(), strict=False)
        if missing or unexpected:
            return Verdict(
                float("nan"),
                None,
                0.0,
                ref_mech.name,
                f"not comparable: parameters differ from {ref_mech.name} ({len(missing)} missing, "
                f"{len(unexpected)} unexpected)",
            )
    x = small.x(offset=MIXER_X_SEED, dtype=torch.float32, device="cpu")  # (B, C, H, W)
    g = small.x(offset=MIXER_GRAD_SEED, dtype=torch.float64) if small.pass_ in registry.BACKWARD_PASSES else None

    def run(module, dt):
        module = module.to(device=small.device, dtype=dt).eval()
        rope = small.rope(dtype=dt)
        xi = x.to(device=small.device, dtype=dt).requires_grad_(g is not None)
        if g is None:
            with torch.no_grad():
                return module(xi, rope), None
        out = module(xi, rope)
        params = [p for p in module.parameters()]
        grads = torch.autograd.grad(out, [xi, *params], g.to(out.dtype), allow_unused=True)
        return out.detach(), grads

    base = ref if ref is not None else cand
    import copy

    ref64, ref_grads64 = run(copy.deepcopy(base), torch.float64)
    ref_lo, ref_grads_lo = run(copy.deepcopy(base), small.torch_dtype) if ref is not None else (None, None)
    out, grads = run(cand, small.torch_dtype)
    if ref is None:
        ref_lo, ref_grads_lo = out, grads
    return _verdict(out, grads, ref64, ref_grads64, ref_lo, ref_grads_lo, small.dtype, ref_mech, mech, note)


def _verdict(out, grads, ref64, ref_grads64, ref_lo, ref_grads_lo, dtype, ref_mech, mech, note) -> Verdict:
    err = rel_err(out, ref64)
    base_err = rel_err(ref_lo, ref64) if ref_mech is not mech else 0.0
    grad_err = None
    if grads is not None:
        grad_err = rel_err(_flat(grads), _flat(ref_grads64))
        if ref_mech is not mech:
            base_err = max(base_err, rel_err(_flat(ref_grads_lo), _flat(ref_grads64)))
    tol = 2 * base_err + TABLE[dtype].tolerance
    label = f"vs {ref_mech.name} in float64" + (f"; {note}" if note else "")
    return Verdict(err, grad_err, tol, ref_mech.name, label)


def snapshot(output) -> list[torch.Tensor]:
    """Detached copies of a timed call's output: a tensor, or the gradients of a fwd_bwd call."""
    tensors = output if isinstance(output, (tuple, list)) else (output,)
    return [t.detach().clone() for t in tensors if isinstance(t, torch.Tensor)]


def recheck(recorded: list[torch.Tensor], output, verdict: Verdict) -> str | None:
    """None when `output` (the timed closure's output after timing) matches `recorded` (its output before
    timing) within `verdict.tolerance`, by relative RMS error over all its tensors; else the error message."""
    again = [
        t.detach() for t in (output if isinstance(output, (tuple, list)) else (output,)) if isinstance(t, torch.Tensor)
    ]
    if [t.shape for t in again] != [t.shape for t in recorded]:
        return "verify after timing failed: the output's shape changed during timing"
    diff = sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(again, recorded))
    norm = sum(float(b.double().pow(2).sum()) for b in recorded)
    err = (diff / norm) ** 0.5 if norm > 0 else diff**0.5
    if err == err and err <= verdict.tolerance:  # NaN fails
        return None
    return (
        f"verify after timing failed: output rel_err {err:.3g} vs its output before timing exceeds tolerance "
        f"{verdict.tolerance:.3g}"
    )
