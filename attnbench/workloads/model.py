"""Model-level workloads: a whole RAVLT timed as inference or as a training step.

fwd: eval mode, `model(x)` under torch.no_grad(). fwd_bwd: train mode (BatchNorm batch statistics,
drop-path on), cross-entropy on fixed random labels, gradients of every parameter through
torch.autograd.grad (fresh tensors each call: nothing accumulates across repeats; no optimizer
step). bwd: the same loss, computed once here in train mode, and only its backward timed (the graph
retained: attnbench.workloads.closure). The model, the input batch, the labels and any checkpoint are
built and loaded here, outside the timed closure. Weights and activations are in the case dtype
(`model.to(dtype)`), as at op and mixer level.

The suite's model-level settings (options of every model case, attnbench.plan.model_settings), as timm's
benchmark.py applies them:
  channels_last  model and input in torch.channels_last (convolutions and norms run NHWC)
  compile        model: torch.compile(model) (COMPILE_BACKEND), built here, compiled by its first call
                 (attnbench.metrics.compile_cost times it); counted FLOPs are of the eager model
  amp            bf16 | fp16: torch.autocast(device, dtype) around the forward and the loss of an fp32 model
                 (the gradients are taken outside it, as in a training step)

Static rows, all per batch of the case (`batch` images at height x width):
  params          count  "model parameters"
  macs            MAC    "macs_no_attn; ..."    conv + norm MACs, attention matmuls left out (forward; the
                                                 paper's convention, beside its reported `macs`)
  macs_with_attn  MAC    "macs_with_attn; ..."  the same + attention matmuls, fvcore-style (forward)
  flops_counted   FLOP   "flopcountermode; ..." torch FlopCounterMode on one call of the timed closure
  flops           FLOP   "analytic; ..."        2 x conv/matmul MACs of the case's pass
The label (first `;`-separated field of `note`) names the convention; counting.py defines them.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from attnbench import registry
from attnbench.errors import AttnbenchError, MechanismUnavailable
from attnbench.measure.compiler import unavailable_reason
from attnbench.measure.flops import count_flops
from attnbench.metrics.row import MetricRow
from attnbench.models.checkpoint import load_checkpoint
from attnbench.models.counting import analytic_counts, count_params, model_flops, stage_grids
from attnbench.models.ravlt import DEFAULT_MIXER, MixerSpec, create_ravlt, resolve_mechanism
from attnbench.plan import model_of
from attnbench.registry import Shape
from attnbench.suite_schema import AMP_DTYPES, COMPILE_MODES, MODEL_SETTINGS
from attnbench.workloads.closure import Workload, retained_backward, timed_call
from attnbench.workloads.inputs import CaseInputs

MODEL_OPTIONS = ("mixer_late", "checkpoint", "ema", *MODEL_SETTINGS)
LABELS_SEED = 20  # labels of the training step: seed + 20
COMPILE_BACKEND = "inductor"  # torch.compile's backend for `compile: model`
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _analytic_rows(
    model_name: str, mixer: MixerSpec, mixer_late: MixerSpec, *, batch: int, height: int, width: int, pass_: str
) -> list[MetricRow]:
    per = f"per batch of {batch}"
    try:
        counts = analytic_counts(model_name, height, width, batch=batch, mixer=mixer, mixer_late=mixer_late)
        flops = model_flops(model_name, height, width, batch=batch, mixer=mixer, mixer_late=mixer_late, pass_=pass_)
    except NotImplementedError:  # a mechanism without a mixer-level flops(): no analytic rows
        return []
    backward = {"fwd_bwd": "fwd_bwd = 3x fwd (softmax cores 3.5x)", "bwd": "bwd = 2x fwd (softmax cores 2.5x)"}.get(
        pass_, "forward"
    )
    return [
        MetricRow(
            "macs",
            counts.macs_no_attn,
            "MAC",
            note=f"macs_no_attn; convs + norms (fvcore inference), attention matmuls excluded; forward, {per}",
        ),
        MetricRow(
            "macs_with_attn",
            counts.macs_with_attn,
            "MAC",
            note=f"macs_with_attn; fvcore-style, attention matmuls included; forward, {per}",
        ),
        MetricRow(
            "flops",
            flops,
            "FLOP",
            note=f"analytic; 2 per conv/matmul MAC (FlopCounterMode convention), {backward}, {per}",
        ),
    ]


def autocast_problem(device: str, amp: str) -> str | None:
    """None when torch can autocast to `amp` (bf16 | fp16) on `device`, else why not."""
    kind = torch.device(device).type
    if not torch.amp.is_autocast_available(kind):
        return f"torch {torch.__version__} has no autocast on {kind}"
    with warnings.catch_warnings(record=True) as caught:  # an unsupported dtype disables autocast, with a warning
        warnings.simplefilter("always")
        with torch.autocast(kind, dtype=AUTOCAST_DTYPES[amp]):
            enabled = torch.is_autocast_enabled(kind)
    if enabled:
        return None
    said = str(caught[0].message).splitlines()[0] if caught else ""
    return f"torch {torch.__version__} cannot autocast to {amp} on {kind}" + (f" ({said})" if said else "")


def _settings(opts: Mapping[str, Any], dtype: str, device: str) -> tuple[bool, str, str]:
    """(channels_last, compile, amp) of the case's options, checked: an AttnbenchError for a value that cannot
    be, MechanismUnavailable (a skipped case) for one this machine cannot run."""
    channels_last, compile_mode, amp = (opts.get(k, d) for k, d in zip(MODEL_SETTINGS, (False, "none", "none")))
    if not isinstance(channels_last, bool):
        raise AttnbenchError(f"channels_last must be true or false, got {channels_last!r}")
    if compile_mode not in COMPILE_MODES:
        raise AttnbenchError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if amp not in AMP_DTYPES:
        raise AttnbenchError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if amp != "none":
        if dtype != "fp32":
            raise AttnbenchError(f"amp: {amp} autocasts an fp32 model, but the case dtype is {dtype}; use fp32")
        problem = autocast_problem(device, amp)
        if problem:
            raise MechanismUnavailable(f"amp: {amp}: {problem}")
    if compile_mode == "model":
        reason = unavailable_reason(device)
        if reason:
            raise MechanismUnavailable(f"compile: model: {reason}")
    return channels_last, compile_mode, amp


def model_workload(inputs: CaseInputs) -> Workload:
    """The case's RAVLT variant (`inputs.variant`: the model, `model_of`) with the case's mechanism in stages 1-2,
    timed as inference (fwd), a training step (fwd_bwd) or a training step's backward alone (bwd).

    options: `mixer_late` (stages 3-4; default softmax_eager as published), `checkpoint` (path,
    loaded with `load_checkpoint`), `ema` (bool: take `model_ema` from the checkpoint), and the settings
    `channels_last`, `compile`, `amp` (module docstring).
    `tokens` of the Workload counts stage-1 tokens (batch * H/4 * W/4).
    """
    opts = dict(inputs.options)
    unknown = sorted(set(opts) - set(MODEL_OPTIONS))
    if unknown:
        raise AttnbenchError(f"unknown model-level options {unknown} (known: {', '.join(MODEL_OPTIONS)})")
    pass_, model_name, mixer = inputs.pass_, model_of(inputs.variant), inputs.mech
    if pass_ not in registry.PASSES:
        raise ValueError(f"unknown pass {pass_!r} ({' | '.join(registry.PASSES)})")
    channels_last, compile_mode, amp = _settings(opts, inputs.dtype, inputs.device)
    if compile_mode == "model" and pass_ == "bwd":
        raise MechanismUnavailable(
            "compile: model with pass bwd: a compiled backward cannot run twice through one retained graph"
        )
    mixer_late = opts.get("mixer_late")
    batch, height, width = inputs.shape.batch, inputs.shape.height, inputs.shape.width

    torch.manual_seed(inputs.seed)  # model init
    model = create_ravlt(model_name, mixer=mixer, mixer_late=mixer_late)
    if "checkpoint" in opts:  # an empty path is an error (load_checkpoint), never random weights
        load_checkpoint(model, opts["checkpoint"], ema=bool(opts.get("ema", False)))
    model.to(device=inputs.device, dtype=inputs.torch_dtype)
    model.train(pass_ in registry.BACKWARD_PASSES)
    x = inputs.x()  # (B, 3, H, W)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if amp != "none":
        kind, amp_dtype = torch.device(inputs.device).type, AUTOCAST_DTYPES[amp]

        def autocast():
            return torch.autocast(kind, dtype=amp_dtype)

    else:
        autocast = contextlib.nullcontext
    labels = None
    if pass_ in registry.BACKWARD_PASSES:
        gen = torch.Generator().manual_seed(inputs.seed + LABELS_SEED)
        labels = torch.randint(0, model.num_classes, (batch,), generator=gen).to(inputs.device)  # (B,)
    forward, fn = _closures(model, x, labels, autocast, pass_)

    static = [MetricRow("params", float(count_params(model)), "count", note="model parameters")]
    static += _analytic_rows(model_name, mixer, mixer_late, batch=batch, height=height, width=width, pass_=pass_)
    step = {"fwd_bwd": "one training step (forward + backward)", "bwd": "the backward of one training step"}.get(
        pass_, "forward"
    )
    if _counter_safe(mixer) and _counter_safe(mixer_late):  # else no counted row: analytic only
        static.append(
            MetricRow(
                "flops_counted", float(count_flops(fn)), "FLOP", note=f"flopcountermode; {step}, per batch of {batch}"
            )
        )
    if compile_mode == "model":  # after counting: FlopCounterMode must not run compiled code
        forward, fn = _closures(torch.compile(model, backend=COMPILE_BACKEND), x, labels, autocast, pass_)
    h1, w1 = stage_grids(height, width)[0]
    return Workload(fn=fn, items=batch, tokens=batch * h1 * w1, module=model, forward=forward, static=static)


def _closures(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor | None,
    autocast: Callable,
    pass_: str = "fwd",
) -> tuple[Callable, Callable]:
    """(forward, timed fn) of `net` on `x`: fwd when `labels` is None (under no_grad), else a training step
    (loss on `labels`, gradients of every parameter), or for pass bwd its backward alone (the loss computed
    once here, its graph retained); `autocast()` around the forward and the loss."""

    def forward() -> torch.Tensor:
        with autocast():
            return net(x)  # (B, classes)

    if labels is None:
        return forward, timed_call(forward, [], "fwd")
    params = [p for p in net.parameters() if p.requires_grad]
    if pass_ == "bwd":
        with autocast():
            loss = F.cross_entropy(net(x).float(), labels)
        return forward, retained_backward(loss, params)

    def fn():
        with autocast():
            loss = F.cross_entropy(net(x).float(), labels)
        return torch.autograd.grad(loss, params)

    return forward, fn


def build_model_workload(
    model_name: str,
    mixer: MixerSpec,
    *,
    batch: int,
    height: int,
    width: int,
    dtype: str,
    device: str | torch.device,
    pass_: str,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Workload:
    """`model_workload` with the case given as keywords: `mixer` a registered name, a Mechanism, or None
    (the published stage 1-2 mixer)."""
    shape = Shape(batch, None, height, width, None, None)
    inputs = CaseInputs(
        resolve_mechanism(mixer, DEFAULT_MIXER),
        "model",
        shape,
        dtype,
        device,
        pass_,
        dict(options or {}),
        variant=model_name,
        seed=seed,
    )
    return model_workload(inputs)


def _counter_safe(spec: MixerSpec) -> bool:
    """Whether FlopCounterMode may run a model with this mixer (see Mechanism.flop_counter_safe)."""
    if spec is None:
        return True
    mech = registry.get(spec) if isinstance(spec, str) else spec
    return bool(getattr(mech, "flop_counter_safe", True))
