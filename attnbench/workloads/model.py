"""Model-level workloads: a whole RAVLT timed as inference or as a training step.

fwd: eval mode, `model(x)` under torch.no_grad(). fwd_bwd: train mode (BatchNorm batch statistics,
drop-path on), cross-entropy on fixed random labels, gradients of every parameter through
torch.autograd.grad (fresh tensors each call: nothing accumulates across repeats; no optimizer
step). bwd: the same loss, computed once here in train mode, and only its backward timed (the graph
retained: attnbench.workloads.closure). The model, the input batch, the labels and any checkpoint are
built and loaded here, outside the timed closure. Weights and activations are in the case dtype (`model.to(dtype)`, no
autocast), as at op and mixer level.

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

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from attnbench import registry
from attnbench.errors import AttnbenchError
from attnbench.measure.flops import count_flops
from attnbench.metrics.row import MetricRow
from attnbench.models.checkpoint import load_checkpoint
from attnbench.models.counting import analytic_counts, count_params, model_flops, stage_grids
from attnbench.models.ravlt import DEFAULT_MIXER, MixerSpec, create_ravlt, resolve_mechanism
from attnbench.registry import Shape
from attnbench.workloads.closure import Workload, retained_backward, timed_call
from attnbench.workloads.inputs import CaseInputs

MODEL_OPTIONS = ("mixer_late", "checkpoint", "ema")
LABELS_SEED = 20  # labels of the training step: seed + 20


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


def model_workload(inputs: CaseInputs) -> Workload:
    """The case's RAVLT variant (`inputs.variant`) with the case's mechanism in stages 1-2, timed as inference
    (fwd), a training step (fwd_bwd) or a training step's backward alone (bwd).

    options: `mixer_late` (stages 3-4; default softmax_eager as published), `checkpoint` (path,
    loaded with `load_checkpoint`), `ema` (bool: take `model_ema` from the checkpoint).
    `tokens` of the Workload counts stage-1 tokens (batch * H/4 * W/4).
    """
    opts = dict(inputs.options)
    unknown = sorted(set(opts) - set(MODEL_OPTIONS))
    if unknown:
        raise AttnbenchError(f"unknown model-level options {unknown} (known: {', '.join(MODEL_OPTIONS)})")
    pass_, model_name, mixer = inputs.pass_, inputs.variant, inputs.mech
    if pass_ not in registry.PASSES:
        raise ValueError(f"unknown pass {pass_!r} ({' | '.join(registry.PASSES)})")
    mixer_late = opts.get("mixer_late")
    batch, height, width = inputs.shape.batch, inputs.shape.height, inputs.shape.width

    torch.manual_seed(inputs.seed)  # model init
    model = create_ravlt(model_name, mixer=mixer, mixer_late=mixer_late)
    if "checkpoint" in opts:  # an empty path is an error (load_checkpoint), never random weights
        load_checkpoint(model, opts["checkpoint"], ema=bool(opts.get("ema", False)))
    model.to(device=inputs.device, dtype=inputs.torch_dtype)
    model.train(pass_ in registry.BACKWARD_PASSES)
    x = inputs.x()  # (B, 3, H, W)

    def forward() -> torch.Tensor:
        return model(x)  # (B, classes)

    if pass_ == "fwd":
        fn = timed_call(forward, [], "fwd")
    else:
        gen = torch.Generator().manual_seed(inputs.seed + LABELS_SEED)
        labels = torch.randint(0, model.num_classes, (batch,), generator=gen).to(inputs.device)  # (B,)
        params = [p for p in model.parameters() if p.requires_grad]

        def loss() -> torch.Tensor:
            return F.cross_entropy(model(x).float(), labels)

        if pass_ == "bwd":
            fn = retained_backward(loss(), params)
        else:

            def fn():
                return torch.autograd.grad(loss(), params)

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
    h1, w1 = stage_grids(height, width)[0]
    return Workload(fn=fn, items=batch, tokens=batch * h1 * w1, module=model, forward=forward, static=static)


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
